"""Checkpoint directories: ``config.json`` + ``model.safetensors`` + ``spm.model``.

Weights are stored with safetensors (no pickle). Each file is written to a temporary file in the
same directory and renamed into place, so a crash never leaves a half-written file under the final
name. ``config.json`` records the SHA-256 of the weights file, of the tokenizer (``spm.model``) and
of its own model config, so truncated or corrupted weights, a swapped tokenizer and edited configs
are reported as such, naming the file (a checkpoint saved before the tokenizer digest existed has
none and loads as before). On load every weight must also have a dtype the model can take (a
float where the model has a float: float32, bfloat16 or float16) and finite values.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from janus_fast.data import MAX_TOKENIZER_FILE_BYTES, InputError, read_regular_file
from janus_fast.output import atomic_write  # the one writer of every file (re-exported here for its callers)

if TYPE_CHECKING:
    from janus_fast.model import JanusModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "spm.model"
TOKENIZER_DIGEST = "tokenizer_sha256"  # config.json's key for the SHA-256 of spm.model
TRAINING_RUN = "training_run"  # config.json's key for the id of the training run that saved it
EXPORTED_FROM = "exported_from"  # ... of an export's: the weights digest of the checkpoint it copies
FAIRSEQ_TOKENIZER_DIGEST = "fairseq_tokenizer_sha256"  # ... of a converted model's dictionary and BPE
FORMAT_VERSION = 1
# the floating types a weight may be stored as (converted to the model's float32 on load)
STORED_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# bounds on what a checkpoint's files may hold, checked before they are read (a checkpoint folder may
# come from anyone: a symlink to /dev/zero in it would otherwise be read until memory ran out)
MAX_CONFIG_BYTES = 16 << 20  # config.json (the shipped model's: 2 KB)
MAX_CONFIG_DEPTH = 32  # its nesting (the shipped model's: 3)
MAX_WEIGHTS_HEADER_BYTES = 64 << 20  # model.safetensors beyond 4 bytes per parameter (its header)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded: the message names the file and the problem."""


def replace_directory(directory: str, write: Callable[[str], None]) -> None:
    """Replace ``directory`` atomically by what ``write(path)`` puts in a fresh directory ``path``.

    The new one is written as ``DIR.tmp``, the old one moved to ``DIR.old``, the new one renamed
    into place and the old one removed: a kill at any moment leaves DIR or DIR.old complete
    (``recover_directory`` brings the latter back).
    """
    final = directory.rstrip(os.sep)
    staging = final + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    previous = final + ".old"
    shutil.rmtree(previous, ignore_errors=True)
    if os.path.exists(final):
        os.replace(final, previous)
    os.replace(staging, final)
    shutil.rmtree(previous, ignore_errors=True)


def recover_directory(directory: str) -> None:
    """After a kill in the middle of ``replace_directory``: bring back DIR.old if DIR is missing."""
    final = directory.rstrip(os.sep)
    if not os.path.exists(final) and os.path.exists(final + ".old"):
        os.replace(final + ".old", final)


def checkpoint_output(output: str, sources: Sequence[str], option: str = "--output") -> str:
    """Where a command that writes a checkpoint directory (export, average) writes: ``output`` with
    symlinks resolved. CheckpointError when it resolves to one of ``sources`` (a symlink to a source
    included: the source would be overwritten), holds one or lies inside one, or is an existing
    non-empty folder that holds no checkpoint (its files would be lost when the new copy takes its place)."""
    from janus_fast.fairseq.dictionary import BPE_FILES, DICT_NAME

    if not output:  # realpath("") is the current folder, which the new checkpoint would replace
        raise CheckpointError(f"{option} is empty: name the checkpoint folder to write")
    real = os.path.realpath(output)
    for source in sources:
        real_source = os.path.realpath(source)
        common = os.path.commonpath([real, real_source])
        if real == real_source:
            raise CheckpointError(
                f"{option} {output} must differ from the source checkpoint {source} (it resolves to it): "
                "a source is never overwritten"
            )
        if common == real:
            raise CheckpointError(
                f"{option} {output} holds the source checkpoint {source}: replacing the folder would delete it"
            )
        if common == real_source:
            raise CheckpointError(
                f"{option} {output} is inside the source checkpoint {source}: a checkpoint folder is replaced whole "
                "when it is saved again (a training run's last/), which would delete it; choose a folder outside it"
            )
    if os.path.lexists(real) and not os.path.isdir(real):
        raise CheckpointError(f"{option} {output} is a file: a checkpoint is a folder; choose a new or empty one")
    if os.path.isdir(real) and os.listdir(real):
        if not os.path.exists(os.path.join(real, CONFIG_NAME)):
            raise CheckpointError(f"{option} {output} is a folder that holds no checkpoint: choose a new or empty one")
        checkpoint_files = {CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME, DICT_NAME, *BPE_FILES.values()}
        others = sorted(name for name in os.listdir(real) if name not in checkpoint_files)
        if others:
            raise CheckpointError(
                f"{option} {output} is a checkpoint folder that also holds {', '.join(others[:5])}"
                f"{' ...' if len(others) > 5 else ''}: the new checkpoint replaces the whole folder, so those "
                "would be lost; move them, or choose a new or empty folder"
            )
    return real


@contextmanager
def replaced_directory(directory: str) -> Iterator[str]:
    """Write a checkpoint directory all at once: yields a new folder beside ``directory`` to write
    into; when the block ends without an error it takes ``directory``'s place (an old copy is moved
    aside first, then deleted), so an interrupted write leaves the old copy as it was and never a
    half-written mix. The folder keeps an old copy's mode, else follows the umask."""
    directory = os.path.abspath(directory)
    parent, name = os.path.dirname(directory), os.path.basename(directory)
    os.makedirs(parent, exist_ok=True)
    try:
        staging = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    except OSError as error:  # named as the folder asked for, not the temporary one beside it
        raise OSError(error.errno, error.strerror, directory) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, os.stat(directory).st_mode & 0o7777 if os.path.isdir(directory) else 0o777 & ~umask)
        yield staging
        old = None
        if os.path.lexists(directory):
            old = os.path.join(parent, f".{name}.old-{secrets.token_hex(4)}")
            os.rename(directory, old)
        os.rename(staging, directory)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and isinstance(error.filename, str) and error.filename.startswith(staging):
            # a file of the new copy (a full disk): named as it would be in the folder asked for
            raise OSError(error.errno, error.strerror, directory + error.filename[len(staging) :]) from error
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.unlink(old)


def save_pretrained(
    model: JanusModel,
    directory: str,
    tokenizer_model: bytes | None = None,
    dtype: torch.dtype | None = None,
    training_run: str | None = None,
    exported_from: str | None = None,
    record: dict[str, str] | None = None,
) -> None:
    """Save ``model`` (weights optionally cast to ``dtype``: float32, bfloat16 or float16) and its
    tokenizer; ``config.json`` records the digests of both (``save_tokenizer`` adds the tokenizer's
    when it is written afterwards) and, for a save of a training run, the run's id
    (``training_run``: ``average`` warns when it averages saves of different runs), and for an
    export the weights digest of the checkpoint it copies (``exported_from``: ``average`` counts a
    checkpoint and its exports as one); ``record``: further entries of ``config.json`` (a training
    save's: the digest of its training state)."""
    if model.precision != "fp32":
        raise CheckpointError(f"cannot save a {model.precision} inference copy; save the fp32 model it came from")
    if dtype is not None and dtype not in STORED_FLOAT_DTYPES:
        raise CheckpointError(f"cannot store weights as {dtype}: use one of {STORED_FLOAT_DTYPES}")
    released = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if released:
        raise CheckpointError(
            f"cannot save a model whose weights are held only by the engine ({released[0]} and "
            f"{len(released) - 1} more: a Translator made with release_weights=True); save the model it was loaded from"
        )
    state = {
        name: (tensor.detach().to(dtype) if dtype is not None and tensor.is_floating_point() else tensor.detach())
        .contiguous()
        .cpu()
        for name, tensor in model.state_dict().items()
    }
    for name, tensor in state.items():  # a weight past the storage type's range would load as inf
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            original = model.state_dict()[name].detach()
            if not bool(torch.isfinite(original).all()):  # not the storage type: the model itself
                raise CheckpointError(
                    f"{name} holds non-finite values (nan or inf): the model is broken (a training run that "
                    "diverged?), nothing was saved"
                )
            largest = float(original.abs().max())
            raise CheckpointError(
                f"{name} does not fit {tensor.dtype} (its largest magnitude is {largest:.4g}): store the "
                "weights as float32 or bfloat16"
            )
    # one metadata entry: safetensors writes several in a varying order, and the same weights saved
    # twice must give the same bytes (weights_sha256 is how `average` tells a checkpoint's copies)
    weights = save_safetensors(state, metadata={"format": f"janus_fast {FORMAT_VERSION}"})
    if tokenizer_model is not None:
        atomic_write(os.path.join(directory, TOKENIZER_NAME), tokenizer_model)
    atomic_write(os.path.join(directory, WEIGHTS_NAME), weights)
    model_config = json.loads(model.config.to_json())
    config = {
        "format_version": FORMAT_VERSION,
        "model": model_config,
        "model_sha256": config_digest(model_config),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    if tokenizer_model is not None:
        config[TOKENIZER_DIGEST] = hashlib.sha256(tokenizer_model).hexdigest()
    if training_run:
        config[TRAINING_RUN] = training_run
    if exported_from:
        config[EXPORTED_FROM] = exported_from
    config.update(record or {})
    atomic_write(os.path.join(directory, CONFIG_NAME), json.dumps(config, indent=2).encode())


def config_digest(model_config: dict) -> str:
    """SHA-256 of the model config's canonical JSON: an edited ``config.json`` is detected."""
    return hashlib.sha256(json.dumps(model_config, sort_keys=True).encode()).hexdigest()


def _depth(value: Any) -> int:
    """How deeply ``value`` (parsed JSON) nests lists and objects (a number or string: 0)."""
    depth, level = 0, [value]
    while level:
        level = [
            child
            for item in level
            if isinstance(item, (dict, list))
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        depth += 1
    return depth - 1


def read_config(directory: str) -> dict:
    """The parsed ``config.json`` of a checkpoint directory (CheckpointError if unusable)."""
    if not os.path.isdir(directory):
        what = "a file, not a folder" if os.path.exists(directory) else "it does not exist"
        raise CheckpointError(f"{directory}: not a checkpoint directory ({what})")
    path = os.path.join(directory, CONFIG_NAME)
    try:
        config = json.loads(read_regular_file(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except FileNotFoundError as error:
        inside = [name for name in ("best", "last") if os.path.isfile(os.path.join(directory, name, CONFIG_NAME))]
        if inside:  # a training run's folder: its checkpoints are inside
            meaning = {"best": "the best validation score", "last": "the latest save"}
            choices = " or ".join(f"{os.path.join(directory, name)} ({meaning[name]})" for name in inside)
            raise CheckpointError(f"{directory} is a training run's folder, not a checkpoint: use {choices}") from error
        raise CheckpointError(f"{path}: missing") from error
    except (OSError, ValueError) as error:  # not JSON, not UTF-8, not a regular file, an integer of 5,000 digits
        raise CheckpointError(f"{path}: unreadable or not valid JSON ({error})") from error
    except RecursionError as error:
        raise CheckpointError(f"{path}: not a janus_fast config (JSON nested too deeply to read)") from error
    if _depth(config) > MAX_CONFIG_DEPTH:  # read, but deeper than any writer of it goes (saving it again would fail)
        raise CheckpointError(f"{path}: not a janus_fast config (JSON nested deeper than {MAX_CONFIG_DEPTH} levels)")
    if not isinstance(config, dict) or "model" not in config or "weights_sha256" not in config:
        raise CheckpointError(f"{path}: not a janus_fast config (needs 'model' and 'weights_sha256')")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {config.get('format_version')} != {FORMAT_VERSION}")
    if not isinstance(config["model"], dict) or config.get("model_sha256") != config_digest(config["model"]):
        raise CheckpointError(
            f"{path}: the model config does not match its model_sha256 (edited or corrupted; "
            "a config cannot be changed without re-saving the checkpoint)"
        )
    return config


def load_pretrained(
    directory: str, device: str | torch.device = "cpu", config: dict[str, Any] | None = None
) -> JanusModel:
    """Load a checkpoint directory; every problem raises CheckpointError naming the file. ``config``:
    its ``config.json`` as already read (``load_checkpoint``), the one the weights are checked against."""
    from janus_fast.model import JanusConfig, JanusModel

    config = read_config(directory) if config is None else config
    config_path = os.path.join(directory, CONFIG_NAME)
    try:
        model_config = JanusConfig.from_dict(config["model"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path}: invalid model config ({error})") from error

    weights_path = os.path.join(directory, WEIGHTS_NAME)
    try:  # at most float32 weights for the config's parameters and a header
        data = read_regular_file(weights_path, 4 * model_config.parameter_count() + MAX_WEIGHTS_HEADER_BYTES)
    except (OSError, InputError) as error:
        raise CheckpointError(f"{weights_path}: cannot read ({error})") from error
    if hashlib.sha256(data).hexdigest() != config["weights_sha256"]:
        raise CheckpointError(
            f"{weights_path}: corrupted or truncated ({len(data)} bytes; checksum does not match {config_path})"
        )
    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{weights_path}: not a valid safetensors file ({error})") from error

    # shapes first, on the meta device (no memory): a config edited to ask for huge tensors is
    # refused here instead of being allocated; once they match, the sizes are the file's own
    with torch.device("meta"):
        expected = JanusModel(model_config).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{name} {tuple(state[name].shape)} != {tuple(expected[name].shape)}"
        for name in sorted(set(state) & set(expected))
        if state[name].shape != expected[name].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{weights_path}: does not match {config_path}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {mismatched[:5]}"
        )
    for name in sorted(state):
        _check_tensor(weights_path, name, state[name], expected[name].dtype)
    tokenizer_path = os.path.join(directory, TOKENIZER_NAME)
    if os.path.exists(tokenizer_path):  # the weights may be loaded alone, but not beside a swapped tokenizer
        _check_tokenizer_digest(tokenizer_path, _read_tokenizer(tokenizer_path), config, config_path)
    model = JanusModel(model_config)
    model.load_state_dict({name: tensor.to(expected[name].dtype) for name, tensor in state.items()})
    # how its weights were stored (``average`` refuses an export's rounded ones), and what was loaded,
    # as the checkpoint's config recorded it (a corpus job's manifest names the model by these: read
    # again from the folder later, they could be another checkpoint's)
    stored = {str(tensor.dtype) for tensor in state.values() if tensor.is_floating_point()}
    model.__dict__["stored_float_dtypes"] = sorted(stored)
    model.__dict__["checkpoint_digests"] = {
        "directory": os.path.realpath(directory),
        "weights_sha256": config["weights_sha256"],
        "config_sha256": config.get("model_sha256"),
    }
    return model.to(device).eval()


def _check_tensor(weights_path: str, name: str, tensor: torch.Tensor, expected: torch.dtype) -> None:
    """CheckpointError naming ``name`` unless ``tensor`` can stand for a weight of dtype ``expected``:
    for a float weight one of ``STORED_FLOAT_DTYPES`` (an int or bool tensor would be converted to
    whole numbers) with every value finite (one NaN or inf weight spreads to every output), for any
    other weight exactly ``expected``."""
    if expected.is_floating_point:
        if tensor.dtype not in STORED_FLOAT_DTYPES:
            raise CheckpointError(
                f"{weights_path}: tensor {name} is stored as {tensor.dtype}, but the model expects a float "
                f"weight (one of {', '.join(str(dtype) for dtype in STORED_FLOAT_DTYPES)})"
            )
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            raise CheckpointError(f"{weights_path}: tensor {name} has {bad} non-finite value(s) (NaN or inf)")
    elif tensor.dtype != expected:
        raise CheckpointError(f"{weights_path}: tensor {name} is stored as {tensor.dtype}, expected {expected}")


def _read_tokenizer(path: str) -> bytes:
    try:
        return read_regular_file(path, MAX_TOKENIZER_FILE_BYTES)
    except (OSError, InputError) as error:
        raise CheckpointError(f"{path}: cannot read ({error})") from error


def _check_tokenizer_digest(path: str, data: bytes, config: dict, config_path: str) -> None:
    """CheckpointError naming ``path`` if ``config`` records a tokenizer digest that ``data`` (the
    file's bytes) does not match; a config without one (saved before it was recorded) passes."""
    recorded = config.get(TOKENIZER_DIGEST)
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
        raise CheckpointError(
            f"{path}: not the tokenizer this checkpoint was saved with (its SHA-256 does not match "
            f"{TOKENIZER_DIGEST} in {config_path}; a tokenizer cannot be swapped without retraining)"
        )


def save_tokenizer(tokenizer, directory: str) -> None:  # noqa: ANN001 - Tokenizer or FairseqTokenizer
    """Write ``tokenizer`` into a checkpoint directory (``spm.model``, or a fairseq dictionary's files)."""
    from janus_fast.fairseq.dictionary import DICT_NAME, FairseqTokenizer, read_dictionary

    if isinstance(tokenizer, FairseqTokenizer):
        tokenizer.save(directory)
        written = read_dictionary(os.path.join(directory, DICT_NAME))  # reads back as it will be loaded
        if written != tokenizer.symbols:
            raise CheckpointError(f"{directory}: the dictionary written does not read back as the one saved")
        if os.path.exists(os.path.join(directory, CONFIG_NAME)):  # saved beside weights: record its digest
            config = read_config(directory)
            config[FAIRSEQ_TOKENIZER_DIGEST] = tokenizer.digest()
            atomic_write(os.path.join(directory, CONFIG_NAME), json.dumps(config, indent=2).encode())
        return
    atomic_write(os.path.join(directory, TOKENIZER_NAME), tokenizer.model_proto)
    if os.path.exists(os.path.join(directory, CONFIG_NAME)):  # saved beside weights: record its digest
        config = read_config(directory)
        config[TOKENIZER_DIGEST] = hashlib.sha256(tokenizer.model_proto).hexdigest()
        atomic_write(os.path.join(directory, CONFIG_NAME), json.dumps(config, indent=2).encode())


def load_tokenizer(directory: str, config: dict[str, Any] | None = None):  # noqa: ANN201 - a Tokenizer or a FairseqTokenizer
    """The tokenizer saved beside the weights (CheckpointError if unusable): the SentencePiece
    model, or for a converted fairseq model its dictionary (``dict.txt``, ``janus_fast.fairseq.dictionary``).
    Which one is the checkpoint's own is decided by what its config records: a ``dict.txt`` beside a
    checkpoint whose config records its SentencePiece model is stray (not used, with a warning); both
    files and no record is a CheckpointError (which tokenizer the weights need is unknown).
    ``config``: the checkpoint's ``config.json`` as already read (``load_checkpoint``)."""
    from janus_fast.fairseq.dictionary import DICT_NAME, FairseqTokenizer
    from janus_fast.tokenizer import Tokenizer

    dictionary, path = os.path.join(directory, DICT_NAME), os.path.join(directory, TOKENIZER_NAME)
    config_path = os.path.join(directory, CONFIG_NAME)
    if config is None and os.path.exists(config_path):
        config = read_config(directory)
    recorded = config is not None and TOKENIZER_DIGEST in config
    # lexists: a dangling link in dict.txt's place is named as that file, not as a missing spm.model
    if os.path.lexists(dictionary) and (recorded or os.path.exists(path)):
        if not recorded:
            raise CheckpointError(
                f"{directory} holds both {TOKENIZER_NAME} and {DICT_NAME} and its config records neither: "
                "remove the one that is not this model's tokenizer"
            )
        warnings.warn(
            f"{dictionary}: not this checkpoint's tokenizer (its config records {TOKENIZER_NAME}); ignored",
            stacklevel=2,
        )
    elif os.path.lexists(dictionary):
        try:
            tokenizer = FairseqTokenizer.load(directory)
        except (OSError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{directory}: unusable fairseq dictionary or BPE ({error})") from error
        recorded_digest = config.get(FAIRSEQ_TOKENIZER_DIGEST) if config is not None else None
        if recorded_digest is not None and tokenizer.digest() != recorded_digest:
            raise CheckpointError(
                f"{dictionary}: not the dictionary (and BPE) this checkpoint was saved with (its digest does not "
                f"match {FAIRSEQ_TOKENIZER_DIGEST} in {config_path}; a dictionary cannot be edited without retraining)"
            )
        return tokenizer

    data = _read_tokenizer(path)
    if config is not None:  # beside weights: it must be the tokenizer they were saved with
        _check_tokenizer_digest(path, data, config, config_path)
    try:
        tokenizer = Tokenizer(data)
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a valid janus_fast SentencePiece model ({error})") from error
    if config is not None:  # the weights' special ids are the tokenizer's fixed ones (else: nonsense, exit 0)
        from janus_fast.vocab import BOS_ID, EOS_ID, MASK_ID, PAD_ID, UNK_ID

        fixed = {"pad_id": PAD_ID, "unk_id": UNK_ID, "bos_id": BOS_ID, "eos_id": EOS_ID, "mask_id": MASK_ID}
        model_config = config.get("model") if isinstance(config.get("model"), dict) else {}
        wrong = [
            f"{name} {model_config[name]} (its tokenizer's: {value})"
            for name, value in fixed.items()
            if name in model_config and model_config[name] != value
        ]
        if wrong:
            raise CheckpointError(
                f"{config_path}: special ids that are not its SentencePiece tokenizer's: {', '.join(wrong)}"
            )
    return tokenizer


def load_checkpoint(directory: str, device: str | torch.device = "cpu"):  # noqa: ANN201 - (model, tokenizer)
    """The model and its tokenizer as one checkpoint: both checked against one reading of its
    ``config.json``, so that they never come from two checkpoints (``export`` and ``average`` replace a
    folder whole, atomically, and a reader can meet the swap between two files). A check that fails
    while ``config.json`` changed meanwhile is such a swap: the folder is read again (3 tries)."""
    for _ in range(3):
        config = read_config(directory)
        try:
            return load_pretrained(directory, device, config=config), load_tokenizer(directory, config=config)
        except CheckpointError:
            try:
                unchanged = read_config(directory) == config
            except CheckpointError:
                unchanged = False
            if unchanged:
                raise
    raise CheckpointError(
        f"{directory}: replaced by another checkpoint while it was being read, 3 times in a row (an export or "
        "average writing onto it?); read it once that is done"
    )


def average_checkpoints(directories: list[str]) -> JanusModel:
    """A model whose every floating-point weight is the mean (accumulated in float64) of the
    weights of ``directories``: checkpoints of one training run (same model config, same
    tokenizer), e.g. the last few saves, which decode better than any one of them. Anything that
    does not match is a CheckpointError naming the checkpoint and the difference."""
    if len(directories) < 2:
        raise CheckpointError(f"averaging needs at least 2 checkpoints, got {len(directories)}")
    configs = [read_config(directory) for directory in directories]  # each read once, the weights checked against it
    seen: dict[str, str] = {}
    for directory, config in zip(directories, configs):  # the same weights twice (a copy, an export): double weight
        identity = weights_identity(config)
        if identity in seen:
            raise CheckpointError(
                f"{directory}: the same weights as {seen[identity]} (the same checkpoint, a copy or an export of "
                "it): each checkpoint counts once"
            )
        seen[identity] = directory
    runs = {config.get(TRAINING_RUN) for config in configs} - {None}
    if len(runs) > 1:
        warnings.warn(
            f"these checkpoints come from {len(runs)} different training runs: the weights of independently "
            "initialised runs do not correspond and their mean decodes badly (runs fine-tuned from one start, "
            "--init-from, do average)",
            stacklevel=2,
        )
    first_config = configs[0]["model"]
    first_tokenizer = _tokenizer_bytes(directories[0])
    model = _full_precision(load_pretrained(directories[0], config=configs[0]), directories[0])
    sums = {name: tensor.double() for name, tensor in model.state_dict().items() if tensor.is_floating_point()}
    seen_contents = {tensors_digest(model.state_dict()): directories[0]}
    for directory, config in zip(directories[1:], configs[1:]):
        model_config = config["model"]
        differing = sorted(
            key for key in set(model_config) | set(first_config) if model_config.get(key) != first_config.get(key)
        )
        if differing:
            raise CheckpointError(
                f"{directory}: model config differs from {directories[0]} in {differing[:5]} (average checkpoints "
                "of one training run)"
            )
        if _tokenizer_bytes(directory) != first_tokenizer:
            raise CheckpointError(f"{directory}: its tokenizer differs from {directories[0]}'s")
        state = _full_precision(load_pretrained(directory, config=config), directory).state_dict()
        contents = tensors_digest(state)
        if contents in seen_contents:  # saved twice, in files whose bytes differ (older saves' metadata order)
            raise CheckpointError(
                f"{directory}: the same weights as {seen_contents[contents]} (tensor for tensor): each checkpoint "
                "counts once"
            )
        seen_contents[contents] = directory
        for name, tensor in state.items():
            if name in sums:
                sums[name] += tensor.double()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in sums:
                tensor.copy_(sums[name] / len(directories))
    return model


def _full_precision(model: JanusModel, directory: str) -> JanusModel:
    """``model`` if its checkpoint stored every weight as float32; CheckpointError for an export to
    bf16 or fp16 (its weights were rounded: a mean with it would carry the rounding in silently)."""
    narrow = sorted(set(model.__dict__.get("stored_float_dtypes", ())) - {"torch.float32"})
    if narrow:
        raise CheckpointError(
            f"{directory}: its weights are stored as {', '.join(narrow)} (an inference export): average the "
            "float32 checkpoints it was exported from"
        )
    return model


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors (names, dtypes, shapes and values, in name order): the same
    for the same weights whatever file they were read from."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_identity(config: dict[str, Any]) -> str:
    """The weights a checkpoint holds (its config.json as read), as the digest of the checkpoint they
    were first saved in: the same for a checkpoint, a byte copy of it and its exports (any dtype)."""
    return config.get(EXPORTED_FROM) or config["weights_sha256"]


def lineage(directories: list[str]) -> dict[str, str | None]:
    """What a copy of these checkpoints' weights keeps of where they came from: the training run
    all of them come from (else None), and for one checkpoint its weights identity."""
    configs = [read_config(directory) for directory in directories]
    runs = {config.get(TRAINING_RUN) for config in configs}
    return {
        "training_run": runs.pop() if len(runs) == 1 else None,
        "exported_from": weights_identity(configs[0]) if len(configs) == 1 else None,
    }


def _tokenizer_bytes(directory: str) -> bytes:
    """The checkpoint's tokenizer files, concatenated in name order (to compare two checkpoints)."""
    from janus_fast.fairseq.dictionary import BPE_FILES, DICT_NAME

    tokenizer_files = {TOKENIZER_NAME, DICT_NAME, *BPE_FILES.values()}
    names = sorted(name for name in os.listdir(directory) if name in tokenizer_files)
    chunks = []
    for name in names:
        with open(os.path.join(directory, name), "rb") as handle:
            chunks.append(name.encode() + b"\0" + handle.read())
    return b"\0".join(chunks)
