"""One GPU visit, prepared: environment, GPU tests, kernel and decoding benchmarks, training.

    python -m janus_fast.gpu_check --out DIR --data-dir DIR [--train MINUTES] [--dry-run]

(``scripts/gpu_check.sh`` builds the package with the CUDA extension first.) Every step is timed,
a failing step is recorded and the next one still runs, and everything lands in ``--out``: one
JSON of every figure (``gpu_check.json``), the log of the GPU tests (``gpu_tests.log``) and, with
``--train``, the trained model (``model/``: bf16 weights, config, tokenizer, metrics), at most
7 files of under 16 MiB, one folder deep. ``--dry-run`` runs the same code paths on the CPU with
tiny sizes (Triton through its interpreter), so that this script is tested in CI between visits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_STEP_SECONDS = 60.0  # a step that would start with less of the budget left is skipped


def environment() -> dict:
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1))
    import janus_fast.ops as ops

    info["native_ops"] = ops.HAS_NATIVE_OPS
    info["native_cuda_kernel"] = bool(
        ops.HAS_NATIVE_OPS and torch._C._dispatch_has_kernel_for_dispatch_key("janus_fast::mask_predict_step", "CUDA")
    )
    return info


def gpu_tests(data_dir: str, dry_run: bool, log_path: str, timeout: float) -> dict:
    """``python_tests/test_gpu.py`` (compiled kernels on the GPU; interpreter on the CPU in dry run),
    its output written to ``log_path`` as it runs (a kill keeps what came before), stopped after
    ``timeout`` seconds (returncode None)."""
    env = dict(os.environ, JANUS_FAST_GPU_TESTS="1", JANUS_FAST_DATA=data_dir)
    env["TRITON_INTERPRET"] = "1" if dry_run else "0"
    env["JANUS_FAST_GPU_DRY_RUN"] = "1" if dry_run else "0"
    command = [sys.executable, "-m", "pytest", "python_tests/test_gpu.py", "-q", "-p", "no:cacheprovider", "-rA"]
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            returncode = subprocess.run(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            returncode = None
    with open(log_path, encoding="utf-8", errors="replace") as log:
        output = log.read()
    summary = [line for line in output.splitlines() if " passed" in line or " failed" in line]
    found = {"returncode": returncode, "summary": summary[-1] if summary else output[-500:]}
    if returncode is None:
        found["timed_out_after_seconds"] = round(timeout, 1)
    return found


def train_model(data_dir: str, out_dir: str, minutes: float, device: str, dry_run: bool) -> dict:
    """Train a JANUS model for ``minutes`` and write it (bf16) with its metrics to ``out_dir``."""
    from janus_fast.checkpoint import load_pretrained, load_tokenizer, save_pretrained
    from janus_fast.training.train import train, train_config

    run_dir = tempfile.mkdtemp(prefix="janus-gpu-run-")
    size = dict(vocab_size=300, d_model=32, num_heads=4, ffn_dim=64, encoder_layers=1, decoder_layers=1)
    config = train_config(
        output_dir=run_dir,
        data_dir=data_dir,
        device=device,
        max_minutes=minutes,
        epochs=1000,
        progress=False,
        **(dict(size, train_limit=300, valid_limit=30, max_tokens=800, log_every=1) if dry_run else {}),
        **({} if dry_run else dict(max_tokens=32768, lr=1e-3, warmup_updates=2000, save_every=1000)),
    )
    state = train(config)
    best = os.path.join(run_dir, "best" if os.path.isdir(os.path.join(run_dir, "best")) else "last")
    model = load_pretrained(best)
    save_pretrained(model, out_dir, load_tokenizer(best).model_proto, dtype=torch.bfloat16)
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):  # none before the first logged update
        shutil.copy(os.path.join(run_dir, "metrics.jsonl"), os.path.join(out_dir, "metrics.jsonl"))
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"updates": state.update, "epochs": state.epoch, "best_valid_bleu": state.best_bleu, "model": out_dir}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the JSON, the logs and the trained model")
    parser.add_argument("--data-dir", required=True, help="Multi30k-style corpus folder")
    parser.add_argument("--train", type=float, default=0.0, metavar="MINUTES", help="train for this long (0: no)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton interpreter")
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help=(
            "time for the whole visit from --started-at: a step that would start with less than a minute "
            "left is skipped, the GPU tests stop two minutes before the end (default: 480 on a GPU, so that "
            "the device call's 600 s limit is never reached; none in a dry run)"
        ),
    )
    parser.add_argument(
        "--started-at",
        type=float,
        default=None,
        help="Unix time the visit began (gpu_check.sh passes it: the CUDA build counts; default: now)",
    )
    args = parser.parse_args(argv)
    budget = args.budget_seconds if args.budget_seconds is not None else (None if args.dry_run else 480.0)
    started = args.started_at if args.started_at is not None else time.time()

    def seconds_left() -> float:
        return float("inf") if budget is None else budget - (time.time() - started)

    if not os.path.isdir(args.data_dir):
        parser.error(f"--data-dir {args.data_dir} is not a folder")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --dry-run to check the script on the CPU")
    os.makedirs(args.out, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    report: dict = {"dry_run": args.dry_run, "steps": {}}
    json_path = os.path.join(args.out, "gpu_check.json")

    def step(name: str, function: Callable[[], object]) -> None:
        start = time.perf_counter()
        print(f"gpu_check: {name} ...", flush=True)
        if seconds_left() < MIN_STEP_SECONDS:
            report[name] = {"skipped": f"the budget of {budget:.0f} s was spent"}
            status = "skipped"
        else:
            try:
                report[name] = function()
                status = "ok"
            except Exception:  # noqa: BLE001 - record it and go on with the next step
                report[name] = {"error": traceback.format_exc()[-3000:]}
                status = "failed"
        report["steps"][name] = {"status": status, "seconds": round(time.perf_counter() - start, 1)}
        print(f"gpu_check: {name} {status} in {report['steps'][name]['seconds']} s", flush=True)
        with open(json_path, "w", encoding="utf-8") as handle:  # after every step: a kill keeps the rest
            json.dump(report, handle, indent=2, default=str)

    from janus_fast.benchmarks import ops
    from janus_fast.benchmarks.decoding import run_bench
    from janus_fast.benchmarks.kernels import profile_kernels

    step("environment", environment)
    tests_log = os.path.join(args.out, "gpu_tests.log")

    def tests_timeout() -> float:  # two steps' minimum before the budget ends: the kernel benchmarks still run
        return max(MIN_STEP_SECONDS, min(1800.0, seconds_left() - 2 * MIN_STEP_SECONDS))

    step("gpu_tests", lambda: gpu_tests(args.data_dir, args.dry_run, tests_log, tests_timeout()))
    step("kernels", lambda: profile_kernels(repeats=2 if args.dry_run else 20))
    grid = (
        dict(vocab_size=50, batch_sizes=(4,), max_lengths=(8,))
        if args.dry_run
        else dict(batch_sizes=(64, 192), max_lengths=(32,))
    )
    repeats = 2 if args.dry_run else 20
    step("mask_predict_step", lambda: ops.run(repeats=repeats, device=device, **grid))
    sentences = dict(limit=8, batch1_sentences=2, repeats=1) if args.dry_run else dict(limit=1000, batch1_sentences=100)
    step("bench", lambda: run_bench(None, args.data_dir, device=device, **sentences))
    if args.train > 0:
        step("train", lambda: train_model(args.data_dir, os.path.join(args.out, "model"), args.train, device,
                                          args.dry_run))  # fmt: skip
    failed = [name for name, item in report["steps"].items() if item["status"] != "ok"]
    gpu_failed = isinstance(report.get("gpu_tests"), dict) and report["gpu_tests"].get("returncode") not in (0, None)
    print(f"gpu_check: wrote {json_path}; steps not ok: {failed or 'none'}; gpu tests failed: {gpu_failed}")
    return 1 if failed or gpu_failed else 0


if __name__ == "__main__":
    sys.exit(main())
