"""Compile the Triton kernels for a GPU architecture on a machine without a GPU.

Triton's interpreter (how the tests run the kernels on the CPU) accepts programs that its compiler
refuses, and it says nothing of the shared memory a tile size needs. This module compiles every
variant a GPU launch can ask for (each autotuning config of the attention kernel for each mask kind,
head dim and dtype; the length kernel for each beam and offset) to a cubin for ``--arch`` (90: H100 /
H200, 80: A100, ...) with the ptxas that ships with Triton, and checks each attention case has a
config within the architecture's shared memory (the autotuner skips the ones beyond it)::

    python -m janus_fast.kernels.ahead_of_time --arch 90          # the variants the tests compile
    python -m janus_fast.kernels.ahead_of_time --arch 90 --all    # all 336 (76 min on 2 busy cores)

Needs triton and no GPU; it must run without ``TRITON_INTERPRET=1`` (the interpreter's kernels
cannot be compiled). Exit status 1 when a variant fails to compile or an attention case has no
config that fits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from . import attention, length
from .attention import DTYPES, HEAD_DIMS, MASK_KINDS, interpreting

# The most shared memory one block may use (bytes, opt-in), by compute capability.
SHARED_MEMORY_LIMITS = {80: 166_912, 86: 101_376, 87: 166_912, 89: 101_376, 90: 232_448}

_POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
# The int arguments of each kernel besides its strides (``stride_*``): i32 in the signature.
_INT_ARGUMENTS = {
    "attention": ("num_heads", "num_queries", "num_keys", "query_offset"),
    "length": ("seq_len", "model_dim", "num_classes", "min_length"),
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One compilation of a kernel: its constexprs and launch options as a GPU launch passes them.

    ``case`` groups the variants of which one must fit (the autotuning configs of one attention
    case); ``pointers`` types each pointer argument, every other non-constexpr argument is an int
    (strides and sizes: i32) unless named in ``floats``."""

    kernel: str
    case: str
    constexprs: dict[str, object]
    pointers: dict[str, str]
    floats: tuple[str, ...] = ()
    num_warps: int = 4
    num_stages: int = 3


@dataclasses.dataclass(frozen=True)
class Compiled:
    variant: Variant
    seconds: float
    shared_bytes: int | None  # None: the compile failed
    error: str | None = None

    def fits(self, arch: int) -> bool:
        limit = SHARED_MEMORY_LIMITS.get(arch)
        return self.shared_bytes is not None and (limit is None or self.shared_bytes <= limit)


def _jit_function(kernel: str):  # noqa: ANN202 (a triton.JITFunction)
    return {"attention": attention._attention_forward_kernel, "length": length._length_kernel}[kernel]


def attention_variants(everything: bool) -> list[Variant]:
    """The autotuned launch of ``fused_attention`` on a GPU: every config for each (mask kind, head
    dim, dtype); without ``everything``, every mask kind at the largest head dim in bf16 (the code
    differs by mask kind), and one mask kind at the other head dims and dtypes (the tiles and the
    shared memory differ by those)."""
    largest, kinds = max(HEAD_DIMS), tuple(MASK_KINDS)
    cases = [
        (kind, head_dim, dtype)
        for kind in kinds
        for head_dim in HEAD_DIMS
        for dtype in DTYPES
        if everything
        or (head_dim == largest and dtype == torch.bfloat16)
        or (kind == kinds[-1] and (head_dim == largest or dtype == torch.bfloat16))
    ]
    variants = []
    for kind, head_dim, dtype in cases:
        pointer = _POINTER_TYPES[dtype]
        for config in attention._attention_forward_tuned.configs:
            variants.append(
                Variant(
                    kernel="attention",
                    case=f"attention {kind} D={head_dim} {_dtype_name(dtype)}",
                    constexprs={
                        "MASK_KIND": MASK_KINDS[kind],
                        "HEAD_DIM": head_dim,
                        **config.kwargs,
                        "DOT_FP32": False,
                    },
                    pointers={
                        "Q": pointer,
                        "K": pointer,
                        "V": pointer,
                        "Out": pointer,
                        "KeyLengths": "*i64",
                        "NumMasked": "*i64",
                    },
                    floats=("scale",),
                    num_warps=config.num_warps,
                    num_stages=config.num_stages,
                )
            )
    return variants


def length_variants(everything: bool) -> list[Variant]:
    """``length_candidates`` on a GPU: each beam (1-16), with and without the offset, for length heads
    of 256 classes (the default) and the kernel's most (1,024), in each dtype; without ``everything``,
    beams 1 and 16 of 256 classes in bf16 and beam 3 of 1,024 classes in fp32."""
    settings = [
        (num_classes, dtype, beam, offset)
        for num_classes in (256, length.LENGTH_MAX_CLASSES)
        for dtype in DTYPES
        for beam in range(1, 17)
        for offset in (False, True)
        if everything
        or (num_classes == 256 and dtype == torch.bfloat16 and beam in (1, 16))
        or (num_classes == length.LENGTH_MAX_CLASSES and dtype == torch.float32 and beam == 3 and not offset)
    ]
    variants = []
    for num_classes, dtype, beam, offset in settings:
        pointer = _POINTER_TYPES[dtype]
        variants.append(
            Variant(
                kernel="length",
                case=f"length C={num_classes} {_dtype_name(dtype)} beam {beam}" + (" offset" if offset else ""),
                constexprs={"BEAM": beam, "OFFSET": offset, **length.block_sizes(num_classes)},
                pointers={
                    "States": pointer,
                    "SrcLengths": "*i64",
                    "Weight": pointer,
                    "OutLengths": "*i64",
                    "OutLogProbs": "*fp32",
                },
            )
        )
    return variants


def signature(variant: Variant) -> dict[str, str]:
    """Triton's signature of the variant's kernel: every argument typed, in the kernel's order; a
    KeyError names an argument the variant does not type (a kernel argument added since)."""
    function = _jit_function(variant.kernel)
    types = {}
    for name in function.arg_names:
        if name in variant.constexprs:
            types[name] = "constexpr"
        elif name in variant.pointers:
            types[name] = variant.pointers[name]
        elif name in variant.floats:
            types[name] = "fp32"
        elif name.startswith("stride_") or name in _INT_ARGUMENTS[variant.kernel]:
            types[name] = "i32"
        else:
            raise KeyError(f"{variant.kernel} kernel argument {name!r} has no type here (kernels/ahead_of_time.py)")
    return types


def compile_variant(variant: Variant, arch: int) -> Compiled:
    """Compiles ``variant`` to a cubin for compute capability ``arch``; a compile error is returned,
    not raised."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    function = _jit_function(variant.kernel)
    constexprs = {(function.arg_names.index(name),): value for name, value in variant.constexprs.items()}
    source = ASTSource(fn=function, signature=signature(variant), constexprs=constexprs)
    options = {"num_warps": variant.num_warps, "num_stages": variant.num_stages}
    start = time.perf_counter()
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as error:  # noqa: BLE001 (any compile failure is the finding)
        return Compiled(variant, time.perf_counter() - start, None, f"{type(error).__name__}: {error}"[:2000])
    return Compiled(variant, time.perf_counter() - start, int(compiled.metadata.shared))


def check(arch: int, everything: bool = False) -> tuple[list[Compiled], list[str]]:
    """Compiles the variants for ``arch``: (every result, the problems: a variant that did not compile,
    an attention case with no config within the shared memory, a length variant beyond it)."""
    if interpreting():
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled for a GPU")
    results = [compile_variant(v, arch) for v in attention_variants(everything) + length_variants(everything)]
    problems = [f"{r.variant.case} {r.variant.constexprs}: {r.error}" for r in results if r.error]
    cases: dict[str, list[Compiled]] = {}
    for result in results:
        cases.setdefault(result.variant.case, []).append(result)
    limit = SHARED_MEMORY_LIMITS.get(arch)
    for case, compiled in cases.items():
        if not any(r.fits(arch) for r in compiled) and all(r.error is None for r in compiled):
            needed = min(r.shared_bytes for r in compiled)
            problems.append(f"{case}: every config needs more shared memory than sm_{arch}'s {limit} bytes ({needed})")
    return results, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m janus_fast.kernels.ahead_of_time", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10: 90 (H100/H200), 80 (A100), ...")
    parser.add_argument("--all", action="store_true", help="every variant (default: the ones the tests compile)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results, problems = check(args.arch, args.all)
    if args.json:
        rows = [
            {"case": r.variant.case, "constexprs": r.variant.constexprs, "num_warps": r.variant.num_warps,
             "num_stages": r.variant.num_stages, "shared_bytes": r.shared_bytes, "fits": r.fits(args.arch),
             "seconds": round(r.seconds, 2), "error": r.error}
            for r in results
        ]  # fmt: skip
        print(json.dumps({"arch": args.arch, "variants": rows, "problems": problems}, indent=1))
    else:
        fitting = sum(r.fits(args.arch) for r in results)
        seconds = sum(r.seconds for r in results)
        print(f"sm_{args.arch}: {len(results)} variants compiled in {seconds:.0f} s, {fitting} fit in shared memory")
        for problem in problems:
            print(f"problem: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
