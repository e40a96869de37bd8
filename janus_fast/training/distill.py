"""Sequence-level knowledge distillation (Kim & Rush, 2016): ``janus-fast distill``.

A teacher translates the training sources; a student then trains on those translations in place of
the references (``janus-fast train --train-target FILE``). The corpus is translated in chunks of
``chunk_size`` lines, each written atomically to ``OUTPUT.parts/`` as it completes, so a killed
run resumes at the first missing chunk; the finished output (gzip when its name ends in ``.gz``)
replaces the parts once every chunk is there, with exactly one line per input line.

``OUTPUT.parts/manifest.json``, written before the first chunk, records what the chunks are made
of: a digest of the source lines and their count, a digest of the model, the translator's settings,
the decoding options and the chunk size. A resumed run whose inputs or options differ in any of
these is refused (InputError naming what changed), as is a parts folder with chunks but no manifest
(made by an older version): its chunks would be spliced into the output misaligned or inconsistent.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Callable

import torch

from janus_fast.checkpoint import CONFIG_NAME, WEIGHTS_NAME, config_digest
from janus_fast.data import InputError, read_lines
from janus_fast.decoding.options import DecodeOptions
from janus_fast.output import atomic_write, check_output_not_input
from janus_fast.translator import Translator

PARTS_SUFFIX = ".parts"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

# the translator's own settings that shape its outputs, as ``Translator`` stores them
TRANSLATOR_SETTINGS = ("device", "precision", "decoder", "max_batch_tokens", "on_long_input")
# manifest names spelled otherwise on the command line (the rest: --name-with-dashes)
_FLAGS = {
    "source_sha256": "--src",
    "collapse_repeats": "--keep-repeats",
    "speculative": "the speculative options (--draft-iterations, --min-draft, --max-verify, --relaxed-*)",
}


def _chunk_path(parts_dir: str, index: int) -> str:
    return os.path.join(parts_dir, f"chunk-{index:06d}.txt")


def _flag(name: str) -> str:
    return _FLAGS.get(name, f"--{name.replace('_', '-')}")


def _jsonable(value: object) -> object:
    """A decoding option that JSON does not know (``SpeculativeOptions``) as JSON data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **dataclasses.asdict(value)}
    return str(value)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise InputError(f"cannot read {path}: {error}") from error
    return digest.hexdigest()


def _update_with(digest: hashlib._Hash, value: object) -> None:
    """Feed a state-dict value (a tensor, quantized ones dequantized; a tuple of them) into ``digest``."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        tensor = (tensor.dequantize() if tensor.is_quantized else tensor).cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, (tuple, list)):
        for item in value:
            _update_with(digest, item)
    else:
        digest.update(repr(value).encode())


def _tokenizer_digest(tokenizer: object) -> str | None:
    """SHA-256 of a tokenizer's model (SentencePiece) or of its symbols and BPE (a fairseq dictionary)."""
    proto = getattr(tokenizer, "model_proto", None)
    if isinstance(proto, bytes):
        return hashlib.sha256(proto).hexdigest()
    symbols = getattr(tokenizer, "symbols", None)
    if isinstance(symbols, list):
        bpe_data = getattr(tokenizer, "bpe_data", None) or b""
        described = "\n".join(symbols) + f"\0{getattr(tokenizer, 'bpe', None)}\0"
        return hashlib.sha256(described.encode("utf-8") + bpe_data).hexdigest()
    return None


def model_identity(translator: Translator, model_dir: str | None = None) -> dict:
    """What identifies the model ``translator`` decodes with: with ``model_dir`` (the checkpoint it
    was loaded from) the weights digest its ``config.json`` records (else the weights file's own
    SHA-256) and its model-config digest; without, SHA-256 digests of the loaded weights and config;
    with either, the digest of the translator's tokenizer. Empty for a translator without a ``model``
    (a stand-in)."""
    tokenizer = {"tokenizer_sha256": _tokenizer_digest(getattr(translator, "tokenizer", None))}
    if model_dir is not None:
        try:
            with open(os.path.join(model_dir, CONFIG_NAME), encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError):
            config = None
        config = config if isinstance(config, dict) else {}
        weights = config.get("weights_sha256")
        if not isinstance(weights, str):
            weights = _file_sha256(os.path.join(model_dir, WEIGHTS_NAME))
        return {"weights_sha256": weights, "config_sha256": config.get("model_sha256"), **tokenizer}
    model = getattr(translator, "model", None)
    if not isinstance(model, torch.nn.Module):
        return {}
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode() + b"\0")
        _update_with(digest, value)
    config = getattr(model, "config", None)
    config_sha256 = config_digest(json.loads(config.to_json())) if hasattr(config, "to_json") else None
    return {"state_sha256": digest.hexdigest(), "config_sha256": config_sha256, **tokenizer}


def distill_manifest(
    translator: Translator, sources: list[str], chunk_size: int, decode_options: dict, model_dir: str | None = None
) -> dict:
    """The manifest of a distill run (``OUTPUT.parts/manifest.json``): everything its chunks depend on."""
    settings = {name: getattr(translator, name, None) for name in TRANSLATOR_SETTINGS}
    settings["device"] = None if settings["device"] is None else str(settings["device"])
    manifest = {
        "format": MANIFEST_FORMAT,
        "source_sha256": hashlib.sha256("".join(line + "\n" for line in sources).encode("utf-8")).hexdigest(),
        "lines": len(sources),
        "chunk_size": chunk_size,
        "model": model_identity(translator, model_dir),
        "translator": settings,
        "decoding": decode_options,
    }
    return json.loads(json.dumps(manifest, sort_keys=True, default=_jsonable))  # as it reads back from the file


def manifest_changes(saved: dict, current: dict) -> list[str]:
    """What differs between the manifest of the run that made a parts folder and this run's, each
    named by its command-line option (empty when they match)."""
    if saved.get("format") != current["format"]:
        return [f"manifest format {saved.get('format')!r} (another janus-fast version) -> {current['format']!r}"]
    changes = []
    if saved.get("source_sha256") != current["source_sha256"]:
        lines = f"{saved.get('lines')} -> {current['lines']} lines" if saved.get("lines") != current["lines"] else ""
        changes.append(f"--src (other content{', ' + lines if lines else ''})")
    if saved.get("chunk_size") != current["chunk_size"]:
        changes.append(f"--chunk-size {saved.get('chunk_size')!r} -> {current['chunk_size']!r}")
    if saved.get("model") != current["model"]:
        changes.append("--model (other weights, model config or tokenizer)")
    for group in ("translator", "decoding"):
        before, after = saved.get(group), current[group]
        before = before if isinstance(before, dict) else {}
        for name in sorted(set(before) | set(after)):
            if name not in before or name not in after or before[name] != after[name]:
                was, now = (repr(values[name]) if name in values else "unset" for values in (before, after))
                changes.append(f"{_flag(name)} {was} -> {now}")
    return changes


def check_parts(parts_dir: str, manifest: dict) -> None:
    """Make ``parts_dir`` the parts folder of the run ``manifest`` describes: create it with the
    manifest, or check the manifest of an interrupted run there (InputError naming what changed).
    A folder without a manifest is refused unless it holds nothing (an atomic write's left-over
    temporary file aside)."""
    path = os.path.join(parts_dir, MANIFEST_NAME)
    restart = f"delete {parts_dir} to start over"
    try:
        os.makedirs(parts_dir, exist_ok=True)
        entries = [name for name in os.listdir(parts_dir) if not name.startswith(".tmp-")]
    except OSError as error:
        raise InputError(f"cannot create {parts_dir}: {error}") from error
    if MANIFEST_NAME not in entries:
        if entries:
            raise InputError(
                f"{parts_dir} holds chunks but no {MANIFEST_NAME} (made by an older janus-fast): which source, "
                f"model and options made them is unknown; {restart}"
            )
        atomic_write(path, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
        return
    try:
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable manifest ({error}); {restart}") from error
    changes = manifest_changes(saved if isinstance(saved, dict) else {}, manifest)
    if changes:
        raise InputError(
            f"{parts_dir} holds the chunks of a distill run with other inputs or options ({'; '.join(changes)}): "
            f"rerun with the options it was started with, or {restart}"
        )


def distill(
    translator: Translator,
    source_path: str,
    output_path: str,
    chunk_size: int = 2000,
    progress: Callable[[int], None] | None = None,
    model_dir: str | None = None,
    options: DecodeOptions | None = None,
    batch_size: int | None = None,
    **changes: object,
) -> int:
    """Translate every line of ``source_path`` (plain or .gz) into ``output_path``; returns the
    number of lines. ``options``, ``changes`` and ``batch_size`` are ``Translator.translate``'s (the
    ones given, not None, are recorded in the manifest).
    Chunks already in ``output_path + '.parts'`` from an interrupted run are kept, not redone, when
    that run's manifest matches this one (``distill_manifest``: source, model, options, chunk size;
    ``model_dir``, the checkpoint the translator was loaded from, identifies the model by its
    recorded weights digest, else the loaded weights are hashed); otherwise InputError. An
    ``output_path`` that is the source file (symlinks followed) is refused (InputError)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_output_not_input(output_path, [source_path], "--output")
    sources = read_lines(source_path)
    parts_dir = output_path + PARTS_SUFFIX
    decoding = {} if options is None else {k: v for k, v in dataclasses.asdict(options).items() if v is not None}
    decoding.update(changes)
    if batch_size is not None:
        decoding["batch_size"] = batch_size
    check_parts(parts_dir, distill_manifest(translator, sources, chunk_size, decoding, model_dir))
    starts = range(0, len(sources), chunk_size)
    for index, start in enumerate(starts):
        chunk = sources[start : start + chunk_size]
        path = _chunk_path(parts_dir, index)
        if os.path.exists(path) and len(read_lines(path)) == len(chunk):
            if progress is not None:
                progress(len(chunk))
            continue
        outputs = translator.translate(
            chunk, options=options, progress=progress, batch_size=batch_size, first_line=start + 1, **changes
        )
        atomic_write(path, "".join(line.replace("\n", " ") + "\n" for line in outputs).encode("utf-8"))

    lines = [line for index in range(len(starts)) for line in read_lines(_chunk_path(parts_dir, index))]
    if len(lines) != len(sources):  # a chunk file changed under us: refuse rather than misalign
        raise InputError(f"{parts_dir}: {len(lines)} translated lines for {len(sources)} sources; delete it and rerun")
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if output_path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write(output_path, data)
    shutil.rmtree(parts_dir)
    return len(lines)


__all__ = ["MANIFEST_NAME", "distill", "distill_manifest", "model_identity"]
