"""``janus-fast profile``: measured throughput of the native ops and the Triton kernels.

Every figure printed is measured in this run; kernels that need a GPU are reported as not timed
on a machine without one.
"""

from __future__ import annotations

import json


def profile_report(vocab_size: int = 8000, repeats: int = 5, as_json: bool = False) -> str:
    """Run the benchmarks and return a printable report (or JSON)."""
    from janus_fast.benchmarks.ops import format_table, run

    sections: dict[str, object] = {}
    text: list[str] = []
    op_rows = run(vocab_size=vocab_size, repeats=repeats)
    sections["mask_predict_step"] = op_rows
    text += ["mask_predict_step (native vs PyTorch reference)", format_table(op_rows), ""]
    try:
        from janus_fast.benchmarks.kernels import format_rows, profile_kernels
    except ImportError as error:  # triton missing: say so, measure nothing
        sections["kernels"] = {"note": f"Triton kernels not available: {error}"}
        text.append(f"Triton kernels: not available ({error})")
    else:
        kernel_rows = profile_kernels()
        sections["kernels"] = kernel_rows
        text += ["Triton kernels", format_rows(kernel_rows)]
    return json.dumps(sections, indent=2) if as_json else "\n".join(text)
