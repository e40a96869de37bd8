"""Translating a corpus file: in chunks, streamed, resumable, shared among the ranks of a torchrun.

``translate_file`` is what ``janus-fast translate``, ``evaluate`` and ``distill`` run on a file.
The source is read twice as a stream, never as a whole: a first pass counts its lines, digests them
and measures each chunk (``scan_source``); a second translates the chunks this process owns. A
chunk is ``chunk_size`` consecutive lines (by default about a sixteenth of the file, 50 to 2,000
lines: ``default_chunk_size``), translated as one ``Translator.translate`` call (sentences sorted
by length into batches inside it) and written atomically to ``OUTPUT.parts/chunk-NNNNNN.txt``.
When every chunk is there, rank 0 streams them in order into ``OUTPUT`` (gzip when its name ends in
``.gz``), checks that it holds one line per source line and deletes the parts.

Under ``torchrun --nproc_per_node N`` (and ``--nnodes``; the output's folder must then be on a
filesystem every machine sees) each rank owns a share of the chunks balanced by their UTF-8 size
(``assign_chunks``: the largest first, each to the least loaded rank), the same for every run of
the same command, and the chunks are the same whatever the number of ranks: the output does not
depend on it, and a run resumed with another number of ranks keeps every finished chunk.

``OUTPUT.parts/manifest.json``, written by rank 0 before the first chunk, records what the chunks
are made of: a digest of the source lines and their count, a digest of the model, the translator's
settings, the decoding options and the chunk size. A run that finds a parts folder (a killed run:
any rank, at any point) keeps its finished chunks when its manifest matches and translates the
others; a manifest that differs is refused (InputError naming what changed), as is a parts folder
with chunks but no manifest (made by an older version). A job that fails or is stopped before any
chunk is finished removes the folder it made (it would only refuse the corrected rerun).
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import torch

from janus_fast.arguments import flag
from janus_fast.checkpoint import CONFIG_NAME, WEIGHTS_NAME, config_digest
from janus_fast.data import InputError, file_sha256, gzip_named, iter_lines, stream_lines
from janus_fast.distributed import DistributedContext
from janus_fast.output import atomic_write, atomic_writer, check_output_not_input, create_exclusively, is_replaceable

PARTS_SUFFIX = ".parts"
MANIFEST_NAME = "manifest.json"
CHUNK_PREFIX = "chunk-"  # a finished chunk's file: chunk-000012.txt (chunk_path)
MANIFEST_FORMAT = 1
MIN_CHUNK_LINES, MAX_CHUNK_LINES = 50, 2000
MAX_CHUNKS = 1 << 17  # chunks of one job at most (each a file; default_chunk_size grows past that)
MAX_SCAN_BLOCKS = 1 << 20  # the source scan's block sizes kept at most (8 MiB)
# the first pass measures the source in blocks of this many lines (chunks are whole blocks)
BLOCK_LINES = 10
# how long the ranks wait for one another to start (and for rank 0's manifest check); at the end
# rank 0 waits for the others' chunks without a collective (a rank may take hours), the others exit
CONNECT_TIMEOUT = datetime.timedelta(minutes=5)

# the translator's own settings that shape its outputs, as ``Translator`` stores them
TRANSLATOR_SETTINGS = ("device", "precision", "decoder", "max_batch_tokens", "on_long_input")
# manifest names spelled otherwise on the command line (the rest: --name-with-dashes)
_FLAGS = {
    "source_sha256": "--src",
    "speculative": "the speculative options (--draft-iterations, --min-draft, --max-verify, --relaxed-*)",
    "native_products": "the CPU's native products (another CPU or JANUS_FAST_ISA)",
}

# the decoding record's entry naming what a job's output lines hold (absent: translations as text),
# and its value for `translate --token-ids` (vocabulary ids in, ids out)
OUTPUT_KIND = "output"
TOKEN_IDS = "token ids"
# manifest entries set by an on/off flag: the flag, the entry's value when the flag is on, and what
# an absent entry means (no output kind: text, --token-ids off; no collapse_repeats: not recorded)
_SWITCHES = {
    OUTPUT_KIND: ("--token-ids", TOKEN_IDS, "off"),
    "collapse_repeats": ("--keep-repeats", False, "unset"),
}

Progress = Callable[[int], object]


class ChunkTranslator(Protocol):
    """What translates a chunk: ``Translator`` or a stand-in with the same ``translate``."""

    def translate(self, sentences: list[str], **options: object) -> list[str]: ...


# ----------------------------------------------------------------------------------------------
# reading the source as a stream


def count_lines(path: str) -> int:
    """How many lines ``iter_lines(path)`` yields."""
    return sum(1 for _ in iter_lines(path))


@dataclasses.dataclass(frozen=True)
class SourceScan:
    """One streaming pass over a source file: its line count, the SHA-256 of its lines (each
    decoded line and a newline) and the UTF-8 bytes (plus one per line) of each block of
    ``block_lines`` lines, the measure of what a chunk costs."""

    lines: int
    sha256: str
    block_lines: int
    block_bytes: array

    def chunk_costs(self, chunk_size: int) -> list[int]:
        """The bytes of each chunk of ``chunk_size`` lines: exact where ``chunk_size`` is a multiple
        of ``block_lines``, else each block's bytes shared among its chunks by lines (the costs only
        balance the ranks' shares)."""
        costs = [0.0] * math.ceil(self.lines / chunk_size)
        for block, size in enumerate(self.block_bytes):
            position, end = block * self.block_lines, min((block + 1) * self.block_lines, self.lines)
            lines = end - position
            while position < end:
                chunk = position // chunk_size
                stop = min(end, (chunk + 1) * chunk_size)
                costs[chunk] += size * (stop - position) / lines
                position = stop
        return [round(cost) for cost in costs]


def scan_source(path: str, block_lines: int = BLOCK_LINES) -> SourceScan:
    """``SourceScan`` of ``path`` (plain or gzip), read as a stream. Its blocks stay at most
    MAX_SCAN_BLOCKS whatever the file's length (neighbouring blocks merged, ``block_lines`` doubled,
    each time they would be more), so the scan's memory is bounded."""
    digest = hashlib.sha256()
    block_bytes = array("q")
    lines = 0
    for line in iter_lines(path):
        data = (line + "\n").encode("utf-8")
        digest.update(data)
        if lines % block_lines == 0:
            if len(block_bytes) == MAX_SCAN_BLOCKS:  # an even count: merged pairwise, lines stay aligned
                block_bytes = array("q", map(sum, zip(block_bytes[::2], block_bytes[1::2])))
                block_lines *= 2
            if lines % block_lines == 0:
                block_bytes.append(0)
        block_bytes[-1] += len(data)
        lines += 1
    return SourceScan(lines, digest.hexdigest(), block_lines, block_bytes)


def default_chunk_size(lines: int) -> int:
    """About a sixteenth of ``lines`` (so that several ranks each get a fair share of chunks), within
    MIN_CHUNK_LINES .. MAX_CHUNK_LINES, a multiple of BLOCK_LINES; more where the file would
    otherwise have more than MAX_CHUNKS chunks."""
    size = min(MAX_CHUNK_LINES, max(MIN_CHUNK_LINES, math.ceil(lines / 16)))
    size = max(size, math.ceil(lines / MAX_CHUNKS))
    return math.ceil(size / BLOCK_LINES) * BLOCK_LINES


def check_chunk_count(lines: int, chunk_size: int) -> None:
    """InputError naming --chunk-size where ``lines`` would make more than MAX_CHUNKS chunks (each
    a file, a manifest entry and a share to assign: their bookkeeping must stay bounded)."""
    if math.ceil(lines / chunk_size) > MAX_CHUNKS:
        raise InputError(
            f"--chunk-size {chunk_size}: the input's {lines} lines would make more than {MAX_CHUNKS} chunks; "
            f"choose --chunk-size >= {math.ceil(lines / MAX_CHUNKS)}"
        )


def assign_chunks(costs: Sequence[int], world_size: int) -> list[int]:
    """The rank that translates each chunk: the chunks taken from the costliest (ties: the first),
    each given to the rank with the least cost so far (ties: the lowest rank). Every rank computes
    the same answer from the same costs."""
    loads = [0] * world_size
    owners = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owners[index] = rank
        loads[rank] += costs[index]
    return owners


# ----------------------------------------------------------------------------------------------
# what made the chunks: the manifest


def _flag(name: str) -> str:
    return _FLAGS.get(name, flag(name))


def _jsonable(value: object) -> object:
    """A decoding option that JSON does not know (``SpeculativeOptions``) as JSON data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **dataclasses.asdict(value)}
    return str(value)


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
    digest = getattr(tokenizer, "digest", None)  # a fairseq dictionary: FairseqTokenizer.digest
    return digest() if callable(digest) else None


def model_identity(translator: object, model_dir: str | None = None) -> dict:
    """What identifies the model ``translator`` decodes with: with ``model_dir`` (the checkpoint it
    was loaded from) the weights digest its ``config.json`` records (else the weights file's own
    SHA-256) and its model-config digest; without, SHA-256 digests of the loaded weights and config;
    with either, the digest of the translator's tokenizer. Empty for a translator without a ``model``
    (a stand-in)."""
    tokenizer = {"tokenizer_sha256": _tokenizer_digest(getattr(translator, "tokenizer", None))}
    loaded = getattr(getattr(translator, "model", None), "__dict__", {}).get("checkpoint_digests")
    if model_dir is not None and loaded is not None and loaded["directory"] == os.path.realpath(model_dir):
        # as it was loaded from that folder, not as the folder holds it now
        return {"weights_sha256": loaded["weights_sha256"], "config_sha256": loaded["config_sha256"], **tokenizer}
    if model_dir is not None:
        try:
            with open(os.path.join(model_dir, CONFIG_NAME), encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError):
            config = None
        config = config if isinstance(config, dict) else {}
        weights = config.get("weights_sha256")
        if not isinstance(weights, str):
            weights = file_sha256(os.path.join(model_dir, WEIGHTS_NAME))
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


def native_products() -> str:
    """What the CPU's native matrix products run here (``JANUS_FAST_ISA`` and the CPU decide it), on
    which bf16 / int8 outputs and the order of fp32 sums depend: the instruction set, and whether
    int8 products use VNNI."""
    from janus_fast.native.cpu_features import has_avx512_vnni
    from janus_fast.native.decoder import cpu_isa

    return f"{cpu_isa()}{' vnni' if has_avx512_vnni() else ''}"


def corpus_manifest(
    translator: object, scan: SourceScan, chunk_size: int, decode_options: dict, model_dir: str | None = None
) -> dict:
    """The manifest of a corpus job (``OUTPUT.parts/manifest.json``): everything its chunks depend on."""
    settings = {name: getattr(translator, name, None) for name in TRANSLATOR_SETTINGS}
    settings["device"] = None if settings["device"] is None else str(settings["device"])
    settings["native_products"] = native_products()
    if settings["device"] is not None and settings["device"].startswith("cuda:"):
        settings["device"] = "cuda"  # each rank its own GPU: the same setting
    manifest = {
        "format": MANIFEST_FORMAT,
        "source_sha256": scan.sha256,
        "lines": scan.lines,
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
                if name in _SWITCHES:  # named as the flag is typed: --keep-repeats on, not collapse_repeats False
                    switch, on, absent = _SWITCHES[name]
                    was, now = (
                        ("on" if values[name] == on else "off") if name in values else absent
                        for values in (before, after)
                    )
                    changes.append(f"{switch} {was} -> {now}")
                    continue
                was, now = (repr(values[name]) if name in values else "unset" for values in (before, after))
                changes.append(f"{_flag(name)} {was} -> {now}")
    return list(dict.fromkeys(changes))  # an option recorded in both groups (--precision) named once


def check_parts(parts_dir: str, manifest: dict, create: bool = True) -> bool:
    """Make ``parts_dir`` the parts folder of the run ``manifest`` describes: create it with the
    manifest (``create``: rank 0), or check the manifest of a run there (InputError naming what
    changed). A folder without a manifest is refused unless it holds nothing (an atomic write's
    left-over temporary file aside); without ``create`` a missing manifest is an InputError.
    Returns whether this call wrote the manifest (a new job, not a resumed one)."""
    path = os.path.join(parts_dir, MANIFEST_NAME)
    restart = f"delete {parts_dir} to start over"
    try:
        if create:
            os.makedirs(parts_dir, exist_ok=True)
        entries = [name for name in os.listdir(parts_dir) if not name.startswith(".tmp-")]
    except OSError as error:
        if not create:
            entries = []
        else:
            raise InputError(f"cannot create {parts_dir}: {error}") from error
    if MANIFEST_NAME not in entries:
        if not create:
            raise InputError(
                f"{parts_dir}: rank 0's manifest is not there: under torchrun on several machines the output must "
                "be on a filesystem every machine sees"
            )
        if entries:
            raise InputError(
                f"{parts_dir} holds chunks but no {MANIFEST_NAME} (left by another job on this output that ended "
                "meanwhile, or made by an older janus-fast): which source, "
                f"model and options made them is unknown; {restart}"
            )
        # exclusive: of two jobs started at once on one output, one makes the manifest and the other
        # reads it below (and is refused if its inputs or options differ)
        if create_exclusively(path, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")):
            return True
    try:
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable manifest ({error}); {restart}") from error
    changes = manifest_changes(saved if isinstance(saved, dict) else {}, manifest)
    if changes:
        held = "the chunks" if _finished_chunks(parts_dir) else "the manifest (no chunk finished yet)"
        raise InputError(
            f"{parts_dir} holds {held} of a run with other inputs or options ({'; '.join(changes)}): "
            f"rerun with the options it was started with, or {restart}"
        )
    return False


def _finished_chunks(parts_dir: str) -> list[str]:
    """The names of the chunk files in ``parts_dir`` (none where it cannot be read)."""
    try:
        return [name for name in os.listdir(parts_dir) if name.startswith(CHUNK_PREFIX)]
    except OSError:
        return []


# ----------------------------------------------------------------------------------------------
# the job


def chunk_path(parts_dir: str, index: int) -> str:
    return os.path.join(parts_dir, f"{CHUNK_PREFIX}{index:06d}.txt")


def _done_path(parts_dir: str, rank: int) -> str:
    return os.path.join(parts_dir, f"rank-{rank:05d}.done")


def _chunk_lines(scan: SourceScan, chunk_size: int, index: int) -> int:
    return min(chunk_size, scan.lines - index * chunk_size)


def _is_complete(path: str, lines: int) -> bool:
    """Whether the chunk file ``path`` exists with ``lines`` lines (files are written atomically:
    a partial one never exists under its name, but a hand-edited one could)."""
    try:
        return sum(1 for _ in iter_lines(path)) == lines
    except InputError:
        return False


def _owned_chunks(source_path: str, chunk_size: int, wanted: set[int]) -> Iterator[tuple[int, list[str]]]:
    """(index, lines) of the chunks in ``wanted``, in file order, read as a stream."""
    if not wanted:
        return
    last = max(wanted)
    chunk: list[str] = []
    index = 0
    for number, line in enumerate(iter_lines(source_path, warn=False)):  # the scan warned already
        index = number // chunk_size
        if index > last:
            break
        if index in wanted:
            chunk.append(line)
            if len(chunk) == chunk_size:
                yield index, chunk
                chunk = []
    if chunk:
        yield index, chunk


class _SharedProgress:
    """Rank 0's view of the whole job for a progress bar: its own sentences as they are translated,
    the other ranks' chunks as their files appear (looked for at most once a second)."""

    def __init__(self, progress: Progress | None, parts_dir: str, foreign: dict[int, int]) -> None:
        self.progress, self.parts_dir, self.foreign = progress, parts_dir, dict(foreign)
        self.last_look = 0.0

    def own(self, count: int) -> None:
        if self.progress is not None:
            self.progress(count)
            self.look()

    def look(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is None or (not force and now - self.last_look < 1.0):
            return
        self.last_look = now
        for index, lines in list(self.foreign.items()):
            if os.path.exists(chunk_path(self.parts_dir, index)):
                del self.foreign[index]
                self.progress(lines)


def _wait_for_ranks(parts_dir: str, context: DistributedContext, shared: _SharedProgress) -> None:
    """Rank 0: until every other rank has finished its chunks (its ``.done`` file), follow their
    progress. No collective: finishing its share can take a rank hours, and torchrun stops the
    job if a rank fails."""
    if context.is_main:
        others = range(1, context.world_size)
        while not all(os.path.exists(_done_path(parts_dir, rank)) for rank in others):
            shared.look(force=True)
            time.sleep(0.5)
        shared.look(force=True)


def merge_chunks(parts_dir: str, output_path: str, chunks: int, expected_lines: int) -> int:
    """Stream the ``chunks`` chunk files of ``parts_dir`` in order into ``output_path`` (gzip when
    it ends in ``.gz``; written atomically), checking that they hold ``expected_lines`` lines in
    all (InputError otherwise, ``output_path`` untouched); returns the line count."""
    lines = 0
    with atomic_writer(output_path) as raw:
        out = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") if gzip_named(output_path) else raw
        for index in range(chunks):
            for line in iter_lines(chunk_path(parts_dir, index)):
                out.write((line + "\n").encode("utf-8"))
                lines += 1
        if lines != expected_lines:  # a chunk file changed under us: refuse rather than misalign
            raise InputError(f"{parts_dir}: {lines} translated lines for {expected_lines} sources; delete it and rerun")
        if out is not raw:
            out.close()
    return lines


def decoding_record(options: object | None, batch_size: int | None, changes: dict) -> dict:
    """The decoding options a corpus job records in its manifest: the ``DecodeOptions`` fields that
    are set, the keyword changes and ``batch_size``."""
    record = {} if options is None else {k: v for k, v in dataclasses.asdict(options).items() if v is not None}
    record.update(changes)
    if batch_size is not None:
        record["batch_size"] = batch_size
    return record


# translate a chunk: (its lines, the input line number of the first, progress) -> output lines
ChunkFunction = Callable[[list[str], int, "Progress | None"], list[str]]


def plain_translations(
    translator: ChunkTranslator, options: object | None, batch_size: int | None, changes: dict
) -> ChunkFunction:
    """The ChunkFunction of ``translator.translate`` with these options: one translation per line."""

    def translate_chunk(lines: list[str], first_line: int, progress: Progress | None) -> list[str]:
        return translator.translate(
            lines, options=options, progress=progress, batch_size=batch_size, first_line=first_line, **changes
        )

    return translate_chunk


def _lines_text(outputs: Sequence[str]) -> str:
    return "".join(line.replace("\n", " ") + "\n" for line in outputs)


def translate_file(
    translator: ChunkTranslator,
    source_path: str,
    output_path: str,
    *,
    chunk_size: int | None = None,
    options: object | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    total: Callable[[int], object] | None = None,
    model_dir: str | None = None,
    context: DistributedContext | None = None,
    translate_chunk: ChunkFunction | None = None,
    output_kind: str | None = None,
    output_name: str | None = None,
    reused: Callable[[int], object] | None = None,
    **changes: object,
) -> int:
    """Translate every line of ``source_path`` (plain or .gz) into ``output_path`` (plain or .gz);
    returns the number of lines. Run by every rank of a torchrun launch (``context``: the ranks;
    default one made from the environment, gloo between processes), each translating its share of
    the chunks; rank 0 writes the output.

    ``options``, ``batch_size`` and ``changes`` are ``Translator.translate``'s, all recorded in the
    manifest. ``translate_chunk`` replaces ``translator.translate`` (e.g. token ids, scored lines),
    with ``output_kind`` naming what its lines hold (recorded too). ``chunk_size``: lines per chunk
    (default ``default_chunk_size``). ``progress`` (rank 0): called with counts of sentences done,
    the whole job's; ``total`` (rank 0): called once with the source's line count, from the scan;
    ``reused``: called once with the number of lines an earlier, interrupted run of the job had
    translated already (0 for a fresh job), so that a caller's speed counts only this run's.
    ``model_dir``, the checkpoint the translator was loaded from, identifies the model by its
    recorded weights digest (else the loaded weights are hashed). An ``output_path``
    that is the source file (symlinks followed) is refused (InputError). ``output_name``: how
    messages name ``output_path`` (default ``--output PATH``)."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_output_not_input(output_path, [source_path], "--output")
    if not is_replaceable(output_path):
        raise InputError(
            f"--output {output_path} is not a regular file (a device, a pipe): a resumable job writes a file beside "
            "its chunks"
        )
    resolve = getattr(translator, "resolve_options", None)  # a Translator: record what decodes, so that
    if resolve is not None and options is not None and not changes:  # a default typed out resumes as unset
        options = resolve(options)
    context = context if context is not None else DistributedContext("gloo", CONNECT_TIMEOUT)
    translate_chunk = translate_chunk or plain_translations(translator, options, batch_size, changes)
    scan = scan_source(source_path, chunk_size or BLOCK_LINES)
    if total is not None and context.is_main:
        total(scan.lines)
    chunk_size = chunk_size or default_chunk_size(scan.lines)
    check_chunk_count(scan.lines, chunk_size)
    costs = scan.chunk_costs(chunk_size)
    chunks = len(costs)
    owners = assign_chunks(costs, context.world_size)
    parts_dir = output_path + PARTS_SUFFIX
    decoding = decoding_record(options, batch_size, changes)
    if output_kind is not None:
        decoding[OUTPUT_KIND] = output_kind
    manifest = corpus_manifest(translator, scan, chunk_size, decoding, model_dir)

    def lines_of(index: int) -> int:
        return min(chunk_size, scan.lines - index * chunk_size)

    error, created = None, False
    if context.is_main:  # rank 0 makes (or checks) the parts folder, the others then check it
        try:
            created = check_parts(parts_dir, manifest)
            for rank in range(1, context.world_size):  # a killed run's: they would end the wait early
                if os.path.exists(_done_path(parts_dir, rank)):
                    os.unlink(_done_path(parts_dir, rank))
        except InputError as problem:
            error = str(problem)
    error = context.broadcast(error)
    if error is not None:
        raise InputError(error)
    if not context.is_main:
        check_parts(parts_dir, manifest, create=False)

    try:
        done = {i for i in range(chunks) if _is_complete(chunk_path(parts_dir, i), lines_of(i))}
        if reused is not None:
            reused(sum(lines_of(i) for i in done))
        if done and context.is_main:
            resumed = f"{len(done)} of {chunks} chunks already translated"
            print(f"janus-fast: resuming {output_path}: {resumed}", file=sys.stderr)
        foreign = {i: lines_of(i) for i in range(chunks) if owners[i] != context.rank and i not in done}
        shared = _SharedProgress(progress if context.is_main else None, parts_dir, foreign)
        if shared.progress is not None and done:
            shared.progress(sum(lines_of(i) for i in done))
        mine = {i for i in range(chunks) if owners[i] == context.rank and i not in done}
        for index, lines in _owned_chunks(source_path, chunk_size, mine):
            counted = shared.own if shared.progress is not None else None
            outputs = translate_chunk(lines, index * chunk_size + 1, counted)
            if len(outputs) != len(lines):
                raise RuntimeError(f"chunk {index}: {len(outputs)} translations for {len(lines)} lines")
            atomic_write(chunk_path(parts_dir, index), _lines_text(outputs).encode("utf-8"))
        if context.world_size > 1:
            atomic_write(_done_path(parts_dir, context.rank), b"")
        _wait_for_ranks(parts_dir, context, shared)
        if context.is_main:
            try:
                merge_chunks(parts_dir, output_path, chunks, scan.lines)
            except OSError as error:  # a full disk: the chunks stay for a rerun
                reason = error.strerror or str(error)
                named = output_name or f"--output {output_path}"
                raise InputError(f"{named}: cannot write the translations ({reason})") from error
            shutil.rmtree(parts_dir)
        return scan.lines
    except BaseException:  # an input error, Ctrl-C: a folder this job made and no chunk finished goes
        if created and not _finished_chunks(parts_dir):  # (it would only block the corrected rerun)
            shutil.rmtree(parts_dir, ignore_errors=True)
        raise


def translate_stream(
    lines: Iterable[str],
    write: Callable[[str], object],
    translate_chunk: ChunkFunction,
    *,
    chunk_size: int = MAX_CHUNK_LINES,
    progress: Progress | None = None,
) -> int:
    """Translate ``lines`` (any iterable: standard input) ``chunk_size`` at a time in one process,
    handing each chunk's output (newline-terminated lines) to ``write`` as soon as it is done;
    nothing kept. Returns the line count."""
    count = 0
    chunk: list[str] = []
    for line in itertools.chain(lines, [None]):
        if line is not None:
            chunk.append(line)
        if chunk and (len(chunk) == chunk_size or line is None):
            write(_lines_text(translate_chunk(chunk, count + 1, progress)))
            count += len(chunk)
            chunk = []
    return count


__all__ = [
    "MANIFEST_NAME",
    "PARTS_SUFFIX",
    "assign_chunks",
    "corpus_manifest",
    "count_lines",
    "default_chunk_size",
    "iter_lines",
    "merge_chunks",
    "model_identity",
    "plain_translations",
    "scan_source",
    "stream_lines",
    "translate_file",
    "translate_stream",
]
