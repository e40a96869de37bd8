"""The Triton kernels compiled for a GPU (sm_90: H100 / H200) on this machine, without a GPU
(``janus_fast.kernels.ahead_of_time``): what the interpreter of test_kernels.py cannot show, that
Triton's compiler and ptxas accept every variant a GPU launch asks for, and that each attention case
has a tile config within the shared memory."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT
from janus_fast.kernels import ahead_of_time

pytest.importorskip("triton", reason="the compile check needs triton (pip install .[triton])")


def run_without_interpreter(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # conftest sets it for the others
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3600)


@pytest.mark.slow
def test_every_tested_kernel_variant_compiles_for_sm90_within_shared_memory():
    result = run_without_interpreter("-m", "janus_fast.kernels.ahead_of_time", "--arch", "90", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["problems"] == []
    rows = report["variants"]
    expected = len(ahead_of_time.attention_variants(False)) + len(ahead_of_time.length_variants(False))
    assert len(rows) == expected and all(row["error"] is None and row["shared_bytes"] > 0 for row in rows)
    cases = {row["case"] for row in rows}
    assert {f"attention {kind} D=128 bfloat16" for kind in ahead_of_time.MASK_KINDS} <= cases
    assert {"attention ar_two_stream D=128 float32", "attention ar_two_stream D=32 bfloat16"} <= cases
    # fp32 at head dim 128: the two larger tiles need more than sm_90's 227 KB, the autotuner skips them
    fp32 = [row for row in rows if row["case"] == "attention ar_two_stream D=128 float32"]
    assert [row["fits"] for row in fp32] == [True, False, False, True]
    assert all(row["fits"] for row in rows if row["case"].startswith("length"))


@pytest.mark.slow
def test_a_variant_the_compiler_refuses_is_reported_not_raised():
    script = (
        "import dataclasses; from janus_fast.kernels import ahead_of_time as a\n"
        "v = a.attention_variants(False)[0]\n"
        "bad = dataclasses.replace(v, constexprs={**v.constexprs, 'HEAD_DIM': 100})\n"  # tl.arange needs 2^k
        "r = a.compile_variant(bad, 90)\n"
        "print(r.shared_bytes, r.fits(90), r.error is not None and 'arange' in r.error)\n"
    )
    result = run_without_interpreter("-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["None", "False", "True"]


def test_the_check_refuses_to_run_under_the_interpreter_and_types_every_argument():
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ahead_of_time.check(90)
    variant = ahead_of_time.attention_variants(False)[0]
    types = ahead_of_time.signature(variant)
    assert list(types) == list(ahead_of_time.attention._attention_forward_kernel.arg_names)
    assert types["Q"] == "*bf16" and types["scale"] == "fp32" and types["HEAD_DIM"] == "constexpr"
    assert types["stride_qb"] == "i32" and types["num_keys"] == "i32"
    untyped = dataclasses.replace(variant, pointers={k: v for k, v in variant.pointers.items() if k != "Out"})
    with pytest.raises(KeyError, match="'Out' has no type"):
        ahead_of_time.signature(untyped)
