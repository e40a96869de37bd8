"""Triton kernels of janus_fast (installed as ``janus_fast.kernels``).

* ``fused_attention``: flash-style attention with the padding / causal / JANUS two-stream masks
  computed in the kernel from per-sentence integers (``attention.py``);
* ``length_candidates``: fused length prediction, mean-pool -> projection -> log-softmax -> top-l
  (``length.py``);
each with its PyTorch reference (``attention_reference``, ``length_candidates_reference``).

The model calls them on CUDA tensors (``janus_fast.attention.use_triton``); on the CPU it uses the
PyTorch path. Importing this package never requires triton; calling a kernel does.
"""

from janus_fast.length import length_candidates_reference

from .attention import DTYPES, HEAD_DIMS, MASK_KINDS, attention_reference, fused_attention, interpreting
from .attention import triton as _triton
from .length import LENGTH_MAX_CLASSES, length_candidates

TRITON_AVAILABLE = _triton is not None

__all__ = [
    "DTYPES",
    "HEAD_DIMS",
    "LENGTH_MAX_CLASSES",
    "MASK_KINDS",
    "TRITON_AVAILABLE",
    "attention_reference",
    "fused_attention",
    "interpreting",
    "length_candidates",
    "length_candidates_reference",
]
