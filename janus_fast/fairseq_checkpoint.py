"""Reading fairseq checkpoints without running code from them.

A fairseq ``checkpoint.pt`` is a pickle. Unpickling can call any importable function, so a
checkpoint from elsewhere could run code on load. ``load_fairseq_checkpoint`` unpickles with
torch's ``weights_only`` loader (a restricted unpickler: tensors, storages and plain containers)
with exactly one extra class allowed, ``argparse.Namespace`` (fairseq stores the model's
arguments in one). Anything else a pickle asks for (a function, ``os.system``, a numpy scalar, a
fairseq class) is refused with a ``CheckpointError`` naming it; nothing from the file is called.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from janus_fast.checkpoint import CheckpointError

__all__ = ["load_fairseq_checkpoint", "fairseq_arguments"]

ALLOWED_GLOBALS = [argparse.Namespace]


def load_fairseq_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict (``model``: name -> tensor, ``args`` / ``cfg``), read
    by the restricted unpickler; CheckpointError for a missing file, a damaged one or one that
    asks for anything but tensors, containers and ``argparse.Namespace``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
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
