"""``scripts/gpu_check.sh --dry-run``: the GPU visit's script, run on the CPU with tiny sizes, so
that it cannot rot between GPU visits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import MULTI30K, REPO_ROOT
from safetensors.torch import load as load_safetensors

from janus_fast.checkpoint import WEIGHTS_NAME, load_pretrained


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("JANUS_FAST_GPU_TESTS", "TRITON_INTERPRET")}
    # the script runs `python` and `janus-fast`: this interpreter's, even from an unactivated venv
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out), "--data-dir", MULTI30K, "--train", "0.05"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    expected_steps = ["environment", "gpu_tests", "kernels", "mask_predict_step", "bench", "train"]
    assert list(report["steps"]) == expected_steps
    assert all(step["status"] == "ok" for step in report["steps"].values()), report["steps"]
    assert " passed" in report["gpu_tests"]["summary"] and "failed" not in report["gpu_tests"]["summary"]
    assert "skipped" not in report["gpu_tests"]["summary"]  # the GPU tests really ran (on the CPU)
    assert {row["setting"] for row in report["bench"]["rows"]} >= {"engine NAR T=4 lb=3", "engine AR greedy"}
    assert report["mask_predict_step"][0]["native_ms"] > 0
    files = [os.path.join(root, name) for root, _, names in os.walk(out) for name in names]
    assert len(files) <= 8 and all(os.path.getsize(f) < 16 * 2**20 for f in files)
    check_bf16_model(str(out / "model"))
    assert (out / "model" / "metrics.jsonl").exists()


def check_bf16_model(directory: str) -> None:
    """The trained model as the GPU visit writes it: every floating-point tensor of its weights
    file is bf16, and it loads as an fp32 model with exactly those values."""
    with open(os.path.join(directory, WEIGHTS_NAME), "rb") as handle:
        weights = load_safetensors(handle.read())
    dtypes = {name: tensor.dtype for name, tensor in weights.items() if tensor.is_floating_point()}
    assert dtypes and set(dtypes.values()) == {torch.bfloat16}, dtypes
    model = load_pretrained(directory)
    parameters = dict(model.named_parameters())
    assert set(parameters) <= set(dtypes)
    for name, parameter in parameters.items():
        assert parameter.dtype == torch.float32, name
        assert torch.equal(parameter.detach(), weights[name].float()), name


def test_a_spent_budget_skips_the_steps_and_the_report_says_so(tmp_path):
    """The visit's time budget: a step that would start with under a minute left is skipped (so the
    device call's limit is never reached), recorded as such, and the exit status says not all ran."""
    from janus_fast.gpu_check import main

    out = tmp_path / "out"
    code = main(["--out", str(out), "--data-dir", MULTI30K, "--dry-run", "--budget-seconds", "30"])
    report = json.loads((out / "gpu_check.json").read_text())
    assert code == 1
    assert list(report["steps"]) == ["environment", "gpu_tests", "kernels", "mask_predict_step", "bench"]
    assert {step["status"] for step in report["steps"].values()} == {"skipped"}
    assert report["bench"] == {"skipped": "the budget of 30 s was spent"}


@pytest.mark.slow
def test_the_gpu_tests_stop_at_their_timeout_and_keep_their_log(tmp_path):
    from janus_fast.gpu_check import gpu_tests

    log = tmp_path / "gpu_tests.log"
    found = gpu_tests(MULTI30K, dry_run=True, log_path=str(log), timeout=0.5)  # pytest takes longer to start
    assert found["returncode"] is None and found["timed_out_after_seconds"] == 0.5
    assert log.exists()
