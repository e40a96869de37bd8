"""Reading fairseq checkpoints without running code from them.

A fairseq ``checkpoint.pt`` is a pickle. Unpickling can call any importable function, so a
checkpoint from elsewhere could run code on load. ``load_fairseq_checkpoint`` unpickles with
torch's ``weights_only`` loader (a restricted unpickler: tensors, storages and plain containers)
with exactly one extra class allowed, ``argparse.Namespace`` (fairseq stores the model's
arguments in one). Anything else a pickle asks for (a function, ``os.system``, a numpy scalar, a
fairseq class) is refused with a ``CheckpointError`` naming it; nothing from the file is called.

Memory is bounded before anything is read: a checkpoint in torch's zip format is a zip archive
whose records torch inflates into memory at the size each one declares, so a small file can declare
gigabytes. ``load_fairseq_checkpoint`` reads the archive's directory first and refuses, before
inflating anything, a pickle record over ``MAX_PICKLE_BYTES``, a stored record whose declared size
differs from its stored size, a compressed record over ``MAX_RECORD_BYTES`` and records that
declare more than ``MAX_INFLATION`` times the file's size in all (plus ``INFLATION_ALLOWANCE``).
"""

from __future__ import annotations

import argparse
import os
import zipfile
import zlib
from typing import Any

import torch

from janus_fast.checkpoint import CheckpointError

__all__ = ["load_fairseq_checkpoint", "fairseq_arguments"]

ALLOWED_GLOBALS = [argparse.Namespace]

# Bounds on what the records of a zip checkpoint declare, checked before torch inflates them.
MAX_PICKLE_BYTES = 64 << 20  # the pickle (names, arguments, structure; tensors are other records): a few MB
MAX_RECORD_BYTES = 4 << 30  # one compressed record (one tensor storage)
MAX_INFLATION = 16  # all records together, uncompressed, at most this times the file's size ...
INFLATION_ALLOWANCE = 64 << 20  # ... plus this (small files); torch.save stores records uncompressed (1x)


def load_fairseq_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict (``model``: name -> tensor, ``args`` / ``cfg``), read
    by the restricted unpickler; CheckpointError for a missing file, a damaged one or one that
    asks for anything but tensors, containers and ``argparse.Namespace``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: {'a folder, not a file' if os.path.isdir(path) else 'no such file'}")
    _check_declared_sizes(path)
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle.UnpicklingError, EOF, bad zip, ...
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "Unsupported global" in str(error) or "weights_only" in str(error):
            message = "it asks for code or classes that are not allowed (only tensors, containers and "
            message += f"argparse.Namespace are read; nothing was executed): {_refused_global(error)}"
        raise CheckpointError(f"{path}: not a readable fairseq checkpoint: {message}") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return checkpoint


def _check_declared_sizes(path: str) -> None:
    """Refuse a zip checkpoint whose records declare more memory than such a file can hold (a
    CheckpointError naming the record and the bound), reading only the archive's directory; a file
    that is not a zip archive (fairseq's older pickle format) is left to ``torch.load``."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a zip archive, or a damaged one: torch.load says what is wrong
    file_size = os.path.getsize(path)
    refused = "refused before inflating it (a damaged or crafted file"
    for record in records:
        declared = record.file_size
        if record.filename.endswith(".pkl") and declared > MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"{path}: its pickle {record.filename} declares {declared:,} bytes, more than the "
                f"{MAX_PICKLE_BYTES:,} a checkpoint's pickle may have: {refused})"
            )
        if record.compress_type == zipfile.ZIP_STORED and declared != record.compress_size:
            raise CheckpointError(
                f"{path}: record {record.filename} declares {declared:,} bytes but stores "
                f"{record.compress_size:,}: {refused})"
            )
        if record.compress_type != zipfile.ZIP_STORED and declared > MAX_RECORD_BYTES:
            raise CheckpointError(
                f"{path}: compressed record {record.filename} declares {declared:,} bytes, more than the "
                f"{MAX_RECORD_BYTES:,} a record may have: {refused}; re-save a real one with torch.save)"
            )
    total = sum(record.file_size for record in records)
    bound = MAX_INFLATION * file_size + INFLATION_ALLOWANCE
    if total > bound:
        raise CheckpointError(
            f"{path}: its records declare {total:,} bytes uncompressed, more than {MAX_INFLATION} times the "
            f"file's {file_size:,} bytes plus {INFLATION_ALLOWANCE:,}: {refused}; re-save a real one with "
            "torch.save, which stores records uncompressed)"
        )
    try:  # every record's CRC-32 (torch.load does not check them: a flipped byte would load)
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as error:
        raise CheckpointError(f"{path}: a damaged zip archive ({error})") from error
    if damaged is not None:
        raise CheckpointError(f"{path}: record {damaged} fails its CRC-32 check: the file is damaged")


def _refused_global(error: Exception) -> str:
    """The ``GLOBAL module.name`` line of torch's weights_only error, or its first line."""
    for line in str(error).splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return str(error).strip().splitlines()[0]


def fairseq_arguments(checkpoint: dict[str, Any], path: str = "checkpoint") -> dict[str, Any]:
    """The model arguments of a fairseq checkpoint as a dict: ``cfg['model']`` (fairseq >= 0.10,
    a Namespace or a dict) or the older top-level ``args`` Namespace."""
    candidates = []
    cfg = checkpoint.get("cfg")
    if isinstance(cfg, dict):
        candidates.append(cfg.get("model"))
    candidates.append(checkpoint.get("args"))
    for candidate in candidates:
        if isinstance(candidate, argparse.Namespace):
            return dict(vars(candidate))
        if isinstance(candidate, dict) and candidate:
            return dict(candidate)
    raise CheckpointError(f"{path}: holds no model arguments (neither cfg['model'] nor args)")
