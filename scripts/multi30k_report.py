"""The README's quality table for the three Multi30k runs of ``scripts/train_multi30k.sh``.

    python scripts/multi30k_report.py [--runs runs] [--out docs/multi30k]

For each run (ar, cmlm, janus) it evaluates the run's best checkpoint (chosen on val) on
test_2016_flickr with ``janus-fast evaluate`` (sacreBLEU, cased, detokenized): AR greedy and beam 4,
NAR T = 1, 2, 4, 10 with length beam 3, skipping the decoder a run was not trained for. It writes
OUT/results.json, OUT/table.md and OUT/valid_curves.png (validation BLEU and loss per epoch).

``--snapshot janus@774=DIR`` (repeatable) adds a row for an earlier checkpoint of a run, scored
with the settings of the issue's targets only (AR beam 4 for runs trained for AR, NAR T=10 for runs
trained for NAR): what more training did, measured on the test set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

RUNS = ("ar", "cmlm", "janus")
SETTINGS = {
    "AR greedy": ["--mode", "ar", "--beam", "1"],
    "AR beam 4": ["--mode", "ar", "--beam", "4"],
    "NAR T=1": ["--mode", "nar", "--iterations", "1", "--length-beam", "3"],
    "NAR T=2": ["--mode", "nar", "--iterations", "2", "--length-beam", "3"],
    "NAR T=4": ["--mode", "nar", "--iterations", "4", "--length-beam", "3"],
    "NAR T=10": ["--mode", "nar", "--iterations", "10", "--length-beam", "3"],
}
TRAINED_FOR = {"ar": ("AR",), "cmlm": ("NAR",), "janus": ("AR", "NAR")}


def evaluate(model_dir: str, data_dir: str, setting: list[str]) -> float:
    """BLEU of one decoding setting on test_2016_flickr, through the CLI."""
    command = [
        sys.executable, "-m", "janus_fast.cli", "evaluate", "--model", model_dir, "--json",
        "--src", os.path.join(data_dir, "test_2016_flickr.de.gz"),
        "--ref", os.path.join(data_dir, "test_2016_flickr.en.gz"),
        *setting,
    ]  # fmt: skip
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(json.loads(result.stdout)["bleu"])


def training_summary(run_dir: str) -> dict:
    """Updates, training seconds and mean target tokens/s of a run, and its validation records."""
    state = torch.load(os.path.join(run_dir, "last", "train_state.pt"), weights_only=True)["state"]
    records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8")]
    # a resumed run repeats the records after its last checkpoint: keep the last one per update
    latest = {(r["type"], r["update"]): r for r in records}
    records = sorted(latest.values(), key=lambda r: r["update"])
    train = [r for r in records if r["type"] == "train"]
    return {
        "updates": state["update"],
        "epochs": state["epoch"],
        "train_seconds": state["train_seconds"],
        "tokens_per_second": sum(r["tokens_per_second"] for r in train) / max(1, len(train)),
        "valid": [r for r in records if r["type"] == "valid"],
    }


def plot_curves(summaries: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bleu_axis, loss_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for name, summary in summaries.items():
        valid = summary["valid"]
        updates = [r["update"] for r in valid]
        modes = {r.get("bleu_mode", "") for r in valid}
        bleu_axis.plot(updates, [r.get("bleu", float("nan")) for r in valid], "o-", label=f"{name} ({'/'.join(modes)})")
        loss_axis.plot(updates, [r["loss"] for r in valid], "o-", label=name)
    bleu_axis.set(xlabel="update", ylabel="val BLEU (greedy AR / NAR T=4 lb 3)", title="Multi30k val BLEU")
    loss_axis.set(xlabel="update", ylabel="val loss (each run's own objective)", title="Multi30k val loss")
    for axis in (bleu_axis, loss_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs", help="directory holding final_ar, final_cmlm, final_janus")
    parser.add_argument("--data-dir", required=True, help="Multi30k folder (test_2016_flickr.de/.en .gz)")
    parser.add_argument("--out", default="docs/multi30k")
    parser.add_argument("--checkpoint", default="best", help="best (chosen on val) or last")
    parser.add_argument("--snapshot", action="append", default=[], metavar="RUN@UPDATE=DIR")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    results: dict[str, dict] = {}
    for name in RUNS:
        run_dir = os.path.join(args.runs, f"final_{name}")
        summary = training_summary(run_dir)
        scores = {}
        for setting, options in SETTINGS.items():
            if setting.split()[0] in TRAINED_FOR[name]:
                scores[setting] = evaluate(os.path.join(run_dir, args.checkpoint), args.data_dir, options)
                print(f"{name:6s} {setting:10s} {scores[setting]:.2f}", flush=True)
        results[name] = {**summary, "bleu": scores}
    snapshots: dict[str, dict[str, float]] = {}
    for spec in args.snapshot:
        label, directory = spec.split("=", 1)
        trained_for = TRAINED_FOR[label.split("@")[0]]
        snapshots[label] = {
            setting: evaluate(directory, args.data_dir, SETTINGS[setting])
            for setting in ("AR beam 4", "NAR T=10")
            if setting.split()[0] in trained_for
        }
        print(label, snapshots[label], flush=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as handle:
        json.dump({**results, "snapshots": snapshots}, handle, indent=1)

    header = "| model | " + " | ".join(SETTINGS) + " | updates | training time | target tokens/s |"
    lines = [header, "|---|" + "---:|" * (len(SETTINGS) + 3)]
    for name, result in results.items():
        cells = [f"{result['bleu'][s]:.2f}" if s in result["bleu"] else "-" for s in SETTINGS]
        minutes = result["train_seconds"] / 60
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {result['updates']} | {minutes:.0f} min | "
            f"{result['tokens_per_second']:.0f} |"
        )
    if snapshots:
        lines += ["", "| earlier checkpoint | AR beam 4 | NAR T=10 |", "|---|---:|---:|"]
        for label, scores in snapshots.items():
            cells = [f"{scores[s]:.2f}" if s in scores else "-" for s in ("AR beam 4", "NAR T=10")]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    print(table)
    plot_curves(results, os.path.join(args.out, "valid_curves.png"))


if __name__ == "__main__":
    main()
