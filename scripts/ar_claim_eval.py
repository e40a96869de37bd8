"""Evaluate the runs of scripts/ar_claim.sh (issue 33) the same way, and draw their curves.

    python scripts/ar_claim_eval.py --runs ~/janus-runs/arclaim --data-dir DIR [--plot docs/ar_claim.png]
    python scripts/ar_claim_eval.py --runs ~/janus-runs/coldstart --only cold_ar,cold_janus --data-dir DIR \
        [--plot docs/cold_start.png]     # the cold-start runs of scripts/cold_start.sh

For the warm start (with warm-start runs) and each run's last weights (RUN/last): sacreBLEU on val and test_2016_flickr
of AR greedy, AR beam 4 and NAR T = 2 / 4 / 10 (length beam 3, no length bonus, repeats collapsed:
the same decoding for every model, fp32 engine), and the speculative mode's acceptance on test
(drafted-and-verified tokens gained per verify pass). For the curves: val AR beam 4 of every kept
save (RUN/saves/uNNNNNN). Results are appended to RUNS/results.jsonl (a model already there is not
evaluated again) and printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import sacrebleu
import torch

from janus_fast.benchmarks.decoding import speculative_acceptance
from janus_fast.data import corpus_path, read_lines
from janus_fast.decoding.options import DecodeOptions
from janus_fast.translator import DEFAULT_MODEL_DIR, Translator

WARM_RUNS = ("ar_seed1", "ar_seed2", "janus_ref", "janus_detach")  # scripts/ar_claim.sh
COLD_RUNS = ("cold_ar", "cold_janus", "cold_ar_seed2")  # scripts/cold_start.sh (the last with SEED2=1)
RUNS = WARM_RUNS + COLD_RUNS
SETTINGS = {
    "ar greedy": {"mode": "ar", "beam": 1},
    "ar beam 4": {"mode": "ar", "beam": 4},
    "nar T=2": {"mode": "nar", "iterations": 2, "length_beam": 3, "length_bonus": 0.0},
    "nar T=4": {"mode": "nar", "iterations": 4, "length_beam": 3, "length_bonus": 0.0},
    "nar T=10": {"mode": "nar", "iterations": 10, "length_beam": 3, "length_bonus": 0.0},
}


def bleu(translator: Translator, sources: list[str], references: list[str], options: dict) -> float:
    return round(sacrebleu.corpus_bleu(translator.translate(sources, **options), [references]).score, 2)


def acceptance(translator: Translator, sources: list[str]) -> float:
    """Mean tokens gained per verify pass of the speculative mode, sentence by sentence."""
    stats = speculative_acceptance(translator, translator.encode_sources(sources), DecodeOptions(mode="spec"))
    return round(stats.tokens_per_round, 3)


def evaluate(model_dir: str, data: dict, full: bool) -> dict:
    translator = Translator.from_pretrained(model_dir)
    record: dict = {"model": model_dir}
    splits = ("val", "test") if full else ("val",)
    # a side no recorded objective trained is refused by decoding (None: no record, every side runs)
    sides = translator.model.config.trained_sides or {"ar", "nar"}
    for name, options in SETTINGS.items():
        if (not full and name != "ar beam 4") or options["mode"] not in sides:
            continue
        for split in splits:
            record[f"{split} {name}"] = bleu(translator, *data[split], options)
    if full and {"ar", "nar"} <= sides:
        record["test spec tokens/pass"] = acceptance(translator, data["test"][0])
    record["full"] = full
    return record


def evaluated_fully(record: dict) -> bool:
    """Whether ``record`` holds a full evaluation (val and test, every setting the model decodes)."""
    return bool(record.get("full")) or "test spec tokens/pass" in record


def last_update(last_dir: str) -> int:
    """The update of a run's ``last`` checkpoint (its train_state)."""
    state = torch.load(os.path.join(last_dir, "train_state.pt"), map_location="cpu", weights_only=False)
    return int(state["state"]["update"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=os.path.expanduser("~/janus-runs/arclaim"))
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--plot", default=None, help="PNG of val AR beam 4 against updates")
    parser.add_argument(
        "--only",
        default=",".join(WARM_RUNS),
        help="comma-separated runs to evaluate (default: the warm-start ones; e.g. the finished ones, or "
        f"{','.join(COLD_RUNS)})",
    )
    args = parser.parse_args()
    only = [run for run in args.only.split(",") if run]
    if set(only) - set(RUNS):
        parser.error(f"--only: unknown runs {sorted(set(only) - set(RUNS))}; known: {', '.join(RUNS)}")
    torch.set_num_threads(1)
    data = {
        split: (read_lines(corpus_path(args.data_dir, name, "de")), read_lines(corpus_path(args.data_dir, name, "en")))
        for split, name in (("val", "val"), ("test", "test_2016_flickr"))
    }
    results_path = os.path.join(args.runs, "results.jsonl")
    done = {}
    if os.path.exists(results_path):
        for line in read_lines(results_path):
            record = json.loads(line)
            done[record["model"]] = record
    models = [(DEFAULT_MODEL_DIR, True)] if set(only) & set(WARM_RUNS) else []
    for run in only:
        models += [(path, False) for path in sorted(glob.glob(os.path.join(args.runs, run, "saves", "u*")))]
        if os.path.isdir(os.path.join(args.runs, run, "last")):
            models.append((os.path.join(args.runs, run, "last"), True))
    for model_dir, full in models:
        moving = model_dir.endswith("/last")  # moves on while its run trains: keyed by its update too
        key = model_dir if moving else os.path.realpath(model_dir)
        update = last_update(model_dir) if moving else None
        known = done.get(key)
        if known is not None and known.get("update") == update and (not full or evaluated_fully(known)):
            continue
        record = {**evaluate(model_dir, data, full), "model": key, "update": update}
        done[key] = record
        with open(results_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
    columns = [f"{split} {name}" for name in SETTINGS for split in ("val", "test")] + ["test spec tokens/pass"]
    print("| model | update | " + " | ".join(columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for key, record in done.items():
        if evaluated_fully(record):
            cells = " | ".join(str(record.get(column, "")) for column in columns)
            print(f"| {key} | {record.get('update') or 0} | {cells} |")
    if args.plot:
        plot(done, args.plot, only)


def plot(done: dict, path: str, runs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    start = done.get(os.path.realpath(DEFAULT_MODEL_DIR), {}).get("val ar beam 4")
    for run in runs:
        points = [(0, start)] if start is not None and run in WARM_RUNS else []
        for key, record in done.items():
            if f"/{run}/saves/u" in key:
                points.append((int(key.rsplit("/u", 1)[1]), record["val ar beam 4"]))
        if len(points) > 1:
            points.sort()
            axis.plot(*zip(*points), marker="o", label=run)
    warm = set(runs) <= set(WARM_RUNS)
    axis.set_xlabel("updates from the warm start" if warm else "updates from a cold start (raw data)")
    axis.set_ylabel("val BLEU, AR beam 4")
    axis.set_title(
        "AR side under each objective (same start, data, schedule)"
        if warm
        else "AR side under each objective from a cold start (same data, schedule)"
    )
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
