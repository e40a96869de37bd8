"""Benchmark of the mask-predict step: native op vs the PyTorch reference, and memory bandwidth.

For N sentences of T tokens (lengths = T, iteration 0, every real position masked) over a
vocabulary of V, it times the native op ``torch.ops.janus_fast.mask_predict_step`` and
``mask_predict_step_reference`` (median of ``repeats``), and reports the bandwidth the native op
achieves reading the logits once (N * T * V * itemsize / time) as a fraction of this machine's
bandwidth, measured in the same run as (read + write bytes) / time of a large tensor copy.

    python -m janus_fast.benchmarks.ops [--vocab 8000] [--repeats 5] [--dtype float32] [--threads N]
    janus-fast profile            (the same table, plus the Triton kernels)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from janus_fast.benchmarks.tables import markdown_table, number
from janus_fast.benchmarks.timing import median_seconds
from janus_fast.ops import HAS_NATIVE_OPS, mask_predict_step_reference

BATCH_SIZES = (1, 3, 64, 192)
MAX_LENGTHS = (16, 32, 64)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synchronizer(device: str) -> Callable[[], object] | None:
    """What makes a timing include the device's queued work: torch.cuda.synchronize on CUDA."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else None


def copy_bandwidth_gbs(num_bytes: int = 1 << 29, repeats: int = 5, device: str = "cpu") -> float:
    """Memory bandwidth of a large float32 tensor copy, (read + write bytes) / time, in GB/s."""
    source = torch.ones(num_bytes // 4, device=device)
    target = torch.empty_like(source)
    seconds = median_seconds(lambda: target.copy_(source), repeats, synchronize=synchronizer(device))
    return 2 * num_bytes / seconds / 1e9


def run(
    vocab_size: int = 8000,
    repeats: int = 5,
    dtype: torch.dtype = torch.float32,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    max_lengths: tuple[int, ...] = MAX_LENGTHS,
    device: str = "cpu",
) -> list[dict]:
    """Times native and reference mask-predict steps over a grid of (N, T).

    Args:
        vocab_size: V of the (N, T, V) logits.
        repeats: timed calls per case; the median is reported.
        dtype: logits dtype (float32 / bfloat16 / float16).
        batch_sizes, max_lengths: the grid of N and T.
        device: "cpu" or "cuda" (the native op's kernel for that device; timings synchronize).

    Returns:
        One dict per (N, T) with keys N, T, V, dtype, native_ms (None without the extension),
        reference_ms, speedup, native_gbs, copy_gbs and bandwidth_fraction.
    """
    copy_gbs = copy_bandwidth_gbs(device=device)
    results = []
    for num_rows in batch_sizes:
        for max_length in max_lengths:
            results.append(_time_case(num_rows, max_length, vocab_size, dtype, repeats, copy_gbs, device))
    return results


def _time_case(
    num_rows: int,
    max_length: int,
    vocab_size: int,
    dtype: torch.dtype,
    repeats: int,
    copy_gbs: float,
    device: str,
) -> dict:
    """Times one (N, T, V): iteration 0 of 10, lengths = T, every real position masked."""
    mask_id = 3
    generator = torch.Generator().manual_seed(num_rows * 1000 + max_length)
    logits = torch.randn(num_rows, max_length, vocab_size, generator=generator).to(device, dtype)
    lengths = torch.full((num_rows,), max_length, dtype=torch.long, device=device)
    start_tokens = torch.full((num_rows, max_length), mask_id, dtype=torch.long, device=device)
    tokens = start_tokens.clone()
    scores = torch.zeros(num_rows, max_length, device=device)
    arguments = (logits, tokens, scores, lengths, 0, 10, mask_id)

    def reset() -> None:
        tokens.copy_(start_tokens)

    synchronize = synchronizer(device)
    reference_s = median_seconds(lambda: mask_predict_step_reference(*arguments), repeats, reset, synchronize)
    native_s = None
    if HAS_NATIVE_OPS:
        native = torch.ops.janus_fast.mask_predict_step
        native_s = median_seconds(lambda: native(*arguments), repeats, reset, synchronize)
    logit_bytes = logits.numel() * logits.element_size()
    native_gbs = logit_bytes / native_s / 1e9 if native_s else None
    return {
        "N": num_rows,
        "T": max_length,
        "V": vocab_size,
        "dtype": str(dtype).replace("torch.", ""),
        "native_ms": native_s * 1e3 if native_s else None,
        "reference_ms": reference_s * 1e3,
        "speedup": reference_s / native_s if native_s else None,
        "native_gbs": native_gbs,
        "copy_gbs": copy_gbs,
        "bandwidth_fraction": native_gbs / copy_gbs if native_gbs else None,
    }


def format_table(results: list[dict]) -> str:
    """Markdown table of ``run()`` results."""

    header = ["N", "T", "native ms", "reference ms", "speedup", "native GB/s", "of bandwidth"]
    rows = [
        [row["N"], row["T"], number(row["native_ms"]), number(row["reference_ms"]), number(row["speedup"], 1) + "x"]
        + [number(row["native_gbs"], 1), number(row["bandwidth_fraction"] and 100 * row["bandwidth_fraction"], 0) + "%"]
        for row in results
    ]
    title = (
        f"copy bandwidth (read + write): {results[0]['copy_gbs']:.1f} GB/s, "
        f"threads: {torch.get_num_threads()}, V = {results[0]['V']}, dtype = {results[0]['dtype']}"
    )
    return "\n".join([title, "", *markdown_table(header, rows, numeric_from=0)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=8000, help="vocabulary size V")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (median)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not HAS_NATIVE_OPS:
        print("janus_fast._C is not built: timing the reference only")
    print(format_table(run(args.vocab, args.repeats, DTYPES[args.dtype])))


if __name__ == "__main__":
    main()
