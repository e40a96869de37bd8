"""Throughput of the Triton kernels against the PyTorch path, for ``janus-fast profile``.

On a CUDA machine each kernel is timed against its PyTorch reference (TFLOP/s for attention, GB/s
for length prediction). Without a GPU nothing of the kernels can be timed (the interpreter says
nothing about GPU speed): the rows then time the PyTorch CPU path the package uses instead, and
say so.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from janus_fast.benchmarks.tables import markdown_table, number
from janus_fast.benchmarks.timing import median_seconds
from janus_fast.kernels import attention_reference, fused_attention, length_candidates, length_candidates_reference
from janus_fast.masks import MaskSpec

# (batch, heads, queries, keys, head dim, mask kind): encoder self-attention, cross-attention,
# the JANUS two-stream training mask and the AR two-stream mask, at Multi30k-like lengths
ATTENTION_SHAPES = (
    (64, 4, 32, 32, 64, "padding"),
    (64, 4, 32, 40, 64, "padding"),
    (64, 4, 64, 48, 64, "two_stream"),
    (64, 4, 64, 32, 64, "ar_two_stream"),
)
LENGTH_SHAPES = ((64, 32, 256), (192, 32, 512))  # (batch, source length, model width)


def _median_ms(function: Callable[[], object], repeats: int, synchronize: Callable[[], object] | None) -> float:
    return 1e3 * median_seconds(function, repeats, synchronize=synchronize)


def _attention_inputs(batch, heads, num_queries, num_keys, head_dim, kind, device, dtype):
    q = torch.randn(batch, heads, num_queries, head_dim, device=device, dtype=dtype)
    k = torch.randn(batch, heads, num_keys, head_dim, device=device, dtype=dtype)
    v = torch.randn_like(k)
    key_lengths = torch.randint(num_keys // 2, num_keys + 1, (batch,), device=device)
    num_masked = (key_lengths // 3) if kind == "two_stream" else None
    if kind == "two_stream":
        key_lengths = torch.minimum(key_lengths, torch.full_like(key_lengths, num_keys))
    return q, k, v, MaskSpec(kind, key_lengths, num_masked)


def _row(op: str, shape: str, dtype: torch.dtype, note: str) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"op": op, "shape": shape, "device": device, "dtype": str(dtype).replace("torch.", ""), "note": note}


def _rates(reference_ms: float, kernel_ms: float | None, work_per_ms: float, unit: str) -> dict:
    """Times and rates (``work_per_ms / ms``: TFLOP/s or GB/s) of the reference and the kernel."""
    return {
        "torch_ms": reference_ms,
        f"torch_{unit}": work_per_ms / reference_ms,
        "triton_ms": kernel_ms,
        f"triton_{unit}": work_per_ms / kernel_ms if kernel_ms else None,
    }


def profile_kernels(repeats: int = 10) -> list[dict]:
    """Measured rows, one per (op, shape); fields say what was timed on which device."""
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    dtype = torch.float16 if on_gpu else torch.float32
    synchronize = torch.cuda.synchronize if on_gpu else None
    note = "" if on_gpu else "no CUDA device: GPU kernels not timed; PyTorch CPU path timed instead"
    rows = []
    for batch, heads, num_queries, num_keys, head_dim, kind in ATTENTION_SHAPES:
        q, k, v, mask = _attention_inputs(batch, heads, num_queries, num_keys, head_dim, kind, device, dtype)
        flops = 4 * batch * heads * num_queries * num_keys * head_dim  # QK^T and PV, dense count
        with torch.inference_mode():
            reference_ms = _median_ms(partial(attention_reference, q, k, v, mask), repeats, synchronize)
            dense = mask.dense(num_queries, num_keys)[:, None]
            sdpa = partial(F.scaled_dot_product_attention, q, k, v, attn_mask=dense)
            sdpa_ms = _median_ms(sdpa, repeats, synchronize)
            kernel = partial(fused_attention, q, k, v, mask)
            kernel_ms = _median_ms(kernel, repeats, synchronize) if on_gpu else None
        row = _row(f"attention[{kind}]", f"B{batch} H{heads} Tq{num_queries} Tk{num_keys} D{head_dim}", dtype, note)
        row.update(_rates(reference_ms, kernel_ms, flops / 1e9, "tflops"))
        row["sdpa_dense_mask_ms"] = sdpa_ms
        row["triton_vs_sdpa"] = sdpa_ms / kernel_ms if kernel_ms else None
        rows.append(row)
    for batch, seq_len, width in LENGTH_SHAPES:
        states = torch.randn(batch, seq_len, width, device=device, dtype=dtype)
        src_lengths = torch.randint(1, seq_len + 1, (batch,), device=device)
        weight = torch.randn(256, width, device=device, dtype=dtype)
        bytes_read = (states.numel() + weight.numel()) * states.element_size()
        with torch.inference_mode():
            reference = partial(length_candidates_reference, states, src_lengths, weight, 3)
            reference_ms = _median_ms(reference, repeats, synchronize)
            kernel = partial(length_candidates, states, src_lengths, weight, 3)
            kernel_ms = _median_ms(kernel, repeats, synchronize) if on_gpu else None
        row = _row("length_candidates", f"B{batch} S{seq_len} d{width} C256 l3", dtype, note)
        rows.append({**row, **_rates(reference_ms, kernel_ms, bytes_read / 1e6, "gbs")})
    return rows


def format_rows(rows: list[dict]) -> str:
    """A markdown table of ``profile_kernels`` rows ("-" where nothing was measured)."""

    header = ["op", "shape", "device", "torch ms", "triton ms", "torch TFLOP/s or GB/s", "triton TFLOP/s or GB/s"]
    cells = [
        [row["op"], row["shape"], f"{row['device']} {row['dtype']}", number(row["torch_ms"]), number(row["triton_ms"])]
        + [number(row.get(f"{side}_tflops", row.get(f"{side}_gbs"))) for side in ("torch", "triton")]
        for row in rows
    ]
    lines = markdown_table(header, cells, numeric_from=3)
    notes = sorted({row["note"] for row in rows if row["note"]})
    return "\n".join(lines + [f"note: {n}" for n in notes])
