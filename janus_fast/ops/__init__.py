"""Native ops of janus_fast behind typed Python entry points.

``mask_predict_step`` runs the C++ / CUDA kernel ``torch.ops.janus_fast.mask_predict_step`` from
the extension ``janus_fast._C`` when it is available, else the pure-PyTorch reference
(``mask_predict_step_reference``, the spec both are tested against) with one warning that says why
and what to run. ``janus_fast._C`` is the module compiled at install time when there is one, else it
is compiled against the installed torch when this module is first imported (once, cached; see
``janus_fast.native``). Set ``JANUS_FAST_FORCE_REFERENCE=1`` to always use the reference.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import warnings

import torch
from torch import Tensor

from janus_fast.native.build import env_flag
from janus_fast.ops.reference import (
    mask_predict_remask_reference,
    mask_predict_step_reference,
    num_to_remask,
    speculative_accept_reference,
)

__all__ = [
    "HAS_NATIVE_OPS",
    "NATIVE_IMPORT_ERROR",
    "env_flag",
    "mask_predict_remask",
    "mask_predict_remask_reference",
    "mask_predict_step",
    "mask_predict_step_reference",
    "num_to_remask",
    "speculative_accept",
    "speculative_accept_reference",
    "uses_native_ops",
]


def _load_native() -> tuple[bool, str | None]:
    """Import janus_fast._C, checked first (``janus_fast.native.loader.import_native``): (whether the op is
    registered, why not). A damaged library is not loaded: one line on stderr says which and what to run."""
    import sys

    from janus_fast.native import loader

    try:
        loader.import_native()  # registers torch.ops.janus_fast.*; may build it first
    except loader.DamagedLibraryError as error:
        print(f"janus_fast: warning: {error}; the PyTorch reference ops are used", file=sys.stderr, flush=True)
        return False, str(error)
    except ImportError as error:
        message = str(error)
        spec = importlib.util.find_spec("janus_fast._C")
        if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            # the module compiled at install time does not load, e.g. it was built against another torch
            message += (
                f" ({spec.origin}, compiled at install time, does not load with torch {torch.__version__}: "
                "reinstall janus_fast from its source checkout, `pip install --force-reinstall --no-deps "
                "<checkout>`, or delete that file to have it built on first use)"
            )
        return False, message
    return hasattr(torch.ops.janus_fast, "mask_predict_step"), None


HAS_NATIVE_OPS, NATIVE_IMPORT_ERROR = _load_native()
_warned_missing = False
_native_kernels: dict[tuple[str, str], bool] = {}


def warn_if_native_missing(what: str) -> None:
    """One RuntimeWarning per process where janus_fast._C did not load (none where it loaded and
    ``JANUS_FAST_FORCE_REFERENCE`` turned it off): ``what`` runs the slower PyTorch path instead."""
    global _warned_missing
    if HAS_NATIVE_OPS or _warned_missing:
        return
    _warned_missing = True
    warnings.warn(
        f"janus_fast native extension (janus_fast._C) is not available ({NATIVE_IMPORT_ERROR}); {what} uses the "
        "slower PyTorch path. `python -m janus_fast.native` builds it (or says why it cannot).",
        RuntimeWarning,
        stacklevel=3,
    )


def _has_native_kernel(device_type: str, op: str = "mask_predict_step", warn: bool = True) -> bool:
    """Whether janus_fast._C has a kernel of ``op`` for this device type (asked once per pair); with
    ``warn``, warns once where not, e.g. a CUDA torch whose janus_fast._C was compiled without nvcc
    (CPU kernels only)."""
    if (op, device_type) not in _native_kernels:
        try:
            key = torch._C._dispatch_key_for_device(device_type)
            found = hasattr(torch.ops.janus_fast, op) and torch._C._dispatch_has_kernel_for_dispatch_key(
                f"janus_fast::{op}", key
            )
        except RuntimeError:
            found = False
        _native_kernels[op, device_type] = found
        if not found and warn:
            warnings.warn(
                f"janus_fast._C has no {device_type} kernel of {op} (for CUDA: it was compiled "
                "without nvcc); the slower PyTorch reference is used on that device. Make nvcc available "
                "(CUDA_HOME) and rebuild: `python -m janus_fast.native` for the first-use build, "
                "`pip install --no-build-isolation --force-reinstall --no-deps <checkout>` for an install-time one.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _native_kernels[op, device_type]


_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def uses_native_ops() -> bool:
    """True when ``mask_predict_step`` calls the compiled kernels (built and not forced off by
    ``JANUS_FAST_FORCE_REFERENCE``; ValueError for a value of it other than 0/1/true/false/yes/no/on/off)."""
    forced = env_flag("JANUS_FAST_FORCE_REFERENCE")
    return HAS_NATIVE_OPS and not forced


# the most mask-predict iterations an op takes: (T - 2) * (num_iterations - 1) stays far inside int64
MAX_OP_ITERATIONS = 2**31 - 1


def _check_int(name: str, value: object, op: str = "mask_predict_step") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{op}: {name} must fit in int64, got {value}")
    return value


def _check_rows(
    op: str,
    tokens: torch.Tensor,
    scores: torch.Tensor,
    lengths: torch.Tensor,
    iteration: int,
    num_iterations: int,
    mask_id: int,
    shape: tuple[int, int] | None = None,
) -> None:
    """The checks of the rows a mask-predict op updates: tokens (N, T) int64 and scores (N, T)
    float32 contiguous, lengths (N,) int64 in [2, T], one device, the scalars' ranges (mask_id >= 0;
    the caller checks it against V where there are logits). ``shape``: the (N, T) required."""
    for name, tensor in (("tokens", tokens), ("scores", scores), ("lengths", lengths)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    for name, tensor, dtype in (
        ("tokens", tokens, torch.int64),
        ("scores", scores, torch.float32),
        ("lengths", lengths, torch.int64),
    ):
        if tensor.dtype != dtype:
            raise TypeError(f"{op}: {name} must be {dtype}, got {tensor.dtype}")
    if shape is None:
        if tokens.dim() != 2:
            raise ValueError(f"{op}: tokens must be (N, T), got shape {tuple(tokens.shape)}")
        shape = tuple(tokens.shape)
    num_rows, max_length = shape
    for name, tensor in (("tokens", tokens), ("scores", scores)):
        if tensor.shape != shape:
            raise ValueError(f"{op}: {name} must be (N, T) = {shape}, got {tuple(tensor.shape)}")
        if not tensor.is_contiguous():
            raise ValueError(f"{op}: {name} is updated in place and must be contiguous")
    if lengths.shape != (num_rows,):
        raise ValueError(f"{op}: lengths must be (N,) = ({num_rows},), got {tuple(lengths.shape)}")
    if len({tokens.device, scores.device, lengths.device}) != 1:
        raise ValueError(
            f"{op}: all tensors must be on one device, got tokens on {tokens.device}, scores on "
            f"{scores.device}, lengths on {lengths.device}"
        )
    if max_length < 2:
        raise ValueError(f"{op}: T must be >= 2 (bos and eos), got {max_length}")
    iteration = _check_int("iteration", iteration, op)
    num_iterations = _check_int("num_iterations", num_iterations, op)
    mask_id = _check_int("mask_id", mask_id, op)
    if not 1 <= num_iterations <= MAX_OP_ITERATIONS:
        raise ValueError(f"{op}: num_iterations must be in [1, {MAX_OP_ITERATIONS}], got {num_iterations}")
    if not 0 <= iteration < num_iterations:
        raise ValueError(f"{op}: iteration must be in [0, {num_iterations}), got {iteration}")
    if mask_id < 0:
        raise ValueError(f"{op}: mask_id must be >= 0, got {mask_id}")
    if lengths.device.type == "meta":
        raise ValueError(f"{op}: tensors on the meta device hold no values to decode (use cpu or cuda)")
    if num_rows > 0:
        low, high = (int(value) for value in torch.aminmax(lengths))
        if low < 2 or high > max_length:
            raise ValueError(f"{op}: lengths must be in [2, T={max_length}], got values in [{low}, {high}]")


def _check_inputs(
    logits: Tensor, tokens: Tensor, scores: Tensor, lengths: Tensor, iteration: int, num_iterations: int, mask_id: int
) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"mask_predict_step: logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"mask_predict_step: logits must be float32, bfloat16 or float16, got {logits.dtype}")
    if logits.dim() != 3:
        raise ValueError(f"mask_predict_step: logits must be (N, T, V), got shape {tuple(logits.shape)}")
    num_rows, max_length, vocab_size = logits.shape
    _check_rows(
        "mask_predict_step", tokens, scores, lengths, iteration, num_iterations, mask_id, (num_rows, max_length)
    )
    if tokens.device != logits.device:
        raise ValueError(
            f"mask_predict_step: all tensors must be on one device, got logits on "
            f"{logits.device}, tokens on {tokens.device}, scores on {scores.device}, "
            f"lengths on {lengths.device}"
        )
    if vocab_size < 2:
        raise ValueError(f"mask_predict_step: V must be >= 2, got {vocab_size}")
    if not mask_id < vocab_size:
        raise ValueError(f"mask_predict_step: mask_id must be in [0, {vocab_size}), got {mask_id}")


def mask_predict_step(
    logits: Tensor, tokens: Tensor, scores: Tensor, lengths: Tensor, iteration: int, num_iterations: int, mask_id: int
) -> Tensor:
    """One mask-predict iteration: fill masked positions, then re-mask the least confident.

    Step 1 (fill): every real position ``1 <= p <= lengths[r] - 2`` whose token is ``mask_id``
    gets the argmax token over ``v != mask_id`` (ties -> lowest v) and, as score, that token's
    log-softmax over the full vocabulary, computed in fp32. Other positions are not changed.
    Step 2 (re-mask): ``floor((lengths[r] - 2) * (num_iterations - 1 - iteration) /
    num_iterations)`` real positions with the lowest scores (ties -> lower position) are set to
    ``mask_id``; their scores are kept. bos (0), eos (lengths[r] - 1) and padding never change.
    Rows are independent.

    Args:
        logits: (N, T, V) float32 / bfloat16 / float16; made contiguous if it is not.
        tokens: (N, T) int64, contiguous, updated in place.
        scores: (N, T) float32, contiguous, updated in place.
        lengths: (N,) int64, 2 <= lengths <= T, counting bos and eos.
        iteration: t in [0, num_iterations).
        num_iterations: number of mask-predict iterations, >= 1.
        mask_id: the mask token, in [0, V).

    Returns:
        (N, T) bool, True where step 2 re-masked.

    Raises:
        TypeError / ValueError on a wrong dtype, shape, device, layout or argument range.
    """
    _check_inputs(logits, tokens, scores, lengths, iteration, num_iterations, mask_id)
    logits = logits.contiguous()
    lengths = lengths.contiguous()
    if uses_native_ops():
        if _has_native_kernel(logits.device.type):
            return torch.ops.janus_fast.mask_predict_step(
                logits, tokens, scores, lengths, iteration, num_iterations, mask_id
            )
    else:
        warn_if_native_missing("mask_predict_step")
    return mask_predict_step_reference(logits, tokens, scores, lengths, iteration, num_iterations, mask_id)


def mask_predict_remask(
    tokens: Tensor, scores: Tensor, lengths: Tensor, iteration: int, num_iterations: int, mask_id: int
) -> Tensor:
    """``mask_predict_step``'s step 2 alone, for decoder passes that fill the masked positions
    themselves (the engine's): ``floor((lengths[r] - 2) * (num_iterations - 1 - iteration) /
    num_iterations)`` real positions with the lowest scores (ties -> lower position) are set to
    ``mask_id``; their scores are kept. bos, eos and padding never change. Rows are independent.

    Args:
        tokens: (N, T) int64, contiguous, updated in place.
        scores: (N, T) float32, contiguous.
        lengths: (N,) int64, 2 <= lengths <= T.
        iteration: t in [0, num_iterations); num_iterations >= 1; mask_id >= 0.

    Returns:
        (N, T) bool, True where re-masked.

    Raises:
        TypeError / ValueError on a wrong dtype, shape, device, layout or argument range.
    """
    _check_rows("mask_predict_remask", tokens, scores, lengths, iteration, num_iterations, mask_id)
    lengths = lengths.contiguous()
    if uses_native_ops() and _has_native_kernel(tokens.device.type, "mask_predict_remask"):
        return torch.ops.janus_fast.mask_predict_remask(tokens, scores, lengths, iteration, num_iterations, mask_id)
    return mask_predict_remask_reference(tokens, scores, lengths, iteration, num_iterations, mask_id)


def speculative_accept(
    draft: Tensor, draft_counts: Tensor, verified: Tensor, relaxed: Tensor | None, eos_id: int
) -> tuple[Tensor, Tensor]:
    """Which drafted tokens a speculative decoding round keeps, per sentence: the drafted tokens up
    to the first that neither equals AR's choice there nor is marked ``relaxed``, then AR's choice
    at that position, cut after the first eos (``speculative_accept_reference`` is the spec).

    Args:
        draft: (N, K) int64, row r's drafted tokens in its first ``draft_counts[r]`` entries.
        draft_counts: (N,) int64 in [0, K].
        verified: (N, K + 1) int64, AR's choice after the prefix and each drafted token.
        relaxed: None or (N, K) bool, drafted tokens kept even where they differ.
        eos_id: the end-of-sentence id (>= 0).

    Returns:
        kept (N,) int64 >= 1 and tokens (N, K + 1) int64: the kept tokens, then -1.

    Raises:
        TypeError / ValueError on a wrong dtype, shape, device or count.
    """
    eos_id = _check_int("eos_id", eos_id, "speculative_accept")
    for name, tensor in (("draft", draft), ("draft_counts", draft_counts), ("verified", verified)):
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int64:
            raise TypeError(f"speculative_accept: {name} must be an int64 tensor")
    if relaxed is not None and (not isinstance(relaxed, torch.Tensor) or relaxed.dtype != torch.bool):
        raise TypeError("speculative_accept: relaxed must be None or a bool tensor")
    if uses_native_ops() and _has_native_kernel(draft.device.type, "speculative_accept", warn=False):
        return torch.ops.janus_fast.speculative_accept(draft, draft_counts, verified, relaxed, eos_id)
    rows, width = draft.shape if draft.dim() == 2 else (-1, -1)
    if draft.dim() != 2 or verified.shape != (rows, width + 1) or draft_counts.shape != (rows,):
        raise ValueError(
            f"speculative_accept: draft (N, K), draft_counts (N,) and verified (N, K + 1) expected, got "
            f"{tuple(draft.shape)}, {tuple(draft_counts.shape)}, {tuple(verified.shape)}"
        )
    if relaxed is not None and relaxed.shape != draft.shape:
        raise ValueError(f"speculative_accept: relaxed must be (N, K) = {tuple(draft.shape)}")
    if eos_id < 0:
        raise ValueError(f"speculative_accept: eos_id must be >= 0, got {eos_id}")
    return speculative_accept_reference(draft, draft_counts, verified, relaxed, eos_id)
