"""Speculative decoding against AR greedy on the shipped model (the figures of docs/speculative.md).

For each precision: batch 1 (the first BATCH1 sentences one at a time) and large batch (all, in
batches of 4,096 source tokens) ms per sentence of AR greedy and of mode "spec" (exact and relaxed),
the best of REPEATS timed runs after a warm-up; the acceptance at batch 1 (tokens gained per verify
pass, verify passes per sentence); how many of the translations equal AR greedy's at the same
precision; and BLEU. Threads: torch's default, or OMP_NUM_THREADS.

    python scripts/bench_speculative.py --data-dir DIR [--limit 1000] [--batch1 50] [--model DIR] [--json]
        [--windows 3,4,6] [--relaxed 3:1.0,5:2.0] [--precisions fp32,bf16,int8]
"""

from __future__ import annotations

import argparse
import json
import time

import sacrebleu
import torch

from janus_fast.data import corpus_path, read_parallel
from janus_fast.decoding import engine
from janus_fast.decoding.options import DecodeOptions, SpeculativeOptions
from janus_fast.decoding.speculative import SpeculativeStats
from janus_fast.native.cpu_features import cpu_description
from janus_fast.native.decoder import cpu_isa
from janus_fast.translator import Translator


def best_seconds(function, repeats: int) -> float:  # noqa: ANN001
    function()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--batch1", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--relaxed", default="3:1.0,5:2.0", help="top k:margin pairs of relaxed rows (fp32)")
    parser.add_argument(
        "--windows",
        default="",
        help="comma-separated max_verify values: exact rows with those windows (default: 8 only)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sources, references = read_parallel(
        corpus_path(args.data_dir, "test_2016_flickr", "de"), corpus_path(args.data_dir, "test_2016_flickr", "en"),
        args.limit,
    )  # fmt: skip
    batch1 = sources[: args.batch1]
    rows = []
    for precision in args.precisions.split(","):
        translator = Translator.from_pretrained(args.model, precision=precision)
        # "speculative" speculates in every batch (its cost, and the exactness check on large batches);
        # the default mode spec runs AR greedy's steps in batches of more than SPECULATE_UP_TO sentences
        always = SpeculativeOptions(speculate_up_to=0)
        settings = [("AR greedy", {"mode": "ar"}, None)]
        settings.append(("speculative", {"mode": "spec", "speculative": always}, always))
        for window in filter(None, args.windows.split(",")):
            options = SpeculativeOptions(speculate_up_to=0, max_verify=int(window))
            settings.append((f"speculative max_verify={window}", {"mode": "spec", "speculative": options}, options))
        if precision == "fp32":
            for pair in filter(None, args.relaxed.split(",")):
                k, margin = pair.split(":")
                options = SpeculativeOptions(relaxed_top_k=int(k), relaxed_margin=float(margin))  # always speculates
                settings.append((f"speculative relaxed k={k} m={margin}", {"mode": "spec", "speculative": options},
                                 options))  # fmt: skip
        greedy_output: list[str] = []
        for name, options, spec in settings:

            def one_at_a_time(translator: Translator = translator, options: dict = options) -> None:
                for source in batch1:
                    translator.translate([source], **options)

            def all_batched(translator: Translator = translator, options: dict = options) -> None:
                translator.translate(sources, **options)

            one = best_seconds(one_at_a_time, args.repeats)
            output = translator.translate(sources, **options)
            large = best_seconds(all_batched, args.repeats)
            row = {
                "precision": precision,
                "setting": name,
                "batch1_ms": 1e3 * one / len(batch1),
                "large_batch_ms": 1e3 * large / len(sources),
                "bleu": sacrebleu.corpus_bleu(output, [references]).score,
            }
            if spec is None:
                greedy_output = output
            else:
                stats = SpeculativeStats()
                resolved = DecodeOptions(mode="spec", speculative=spec, precision=precision)
                resolved = resolved.resolve(translator.model.config)
                for source in batch1:
                    ids = translator.encode_sources([source])[0]
                    engine.decode(translator.choice, torch.tensor([ids]), torch.tensor([len(ids)]), resolved, stats)
                row["tokens_per_verify_pass"] = stats.tokens_per_round
                row["verify_passes_per_sentence"] = stats.rounds_per_sentence
                row["same_as_ar_greedy"] = sum(a == b for a, b in zip(output, greedy_output))
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"cpu": cpu_description(), "native_isa": cpu_isa(), "threads": torch.get_num_threads(),
              "sentences": len(sources), "batch1_sentences": len(batch1), "rows": rows}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"\nCPU: {report['cpu']}; native products: {report['native_isa']}; {report['threads']} thread(s); "
          f"{len(sources)} sentences, batch 1 = the first {len(batch1)}")  # fmt: skip
    print(
        "| precision | setting | batch 1 ms/sent | large batch ms/sent | BLEU | tokens per verify pass "
        "| verify passes per sentence | same as AR greedy |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        spec = (
            f"{row['tokens_per_verify_pass']:.2f} | {row['verify_passes_per_sentence']:.2f} "
            f"| {row['same_as_ar_greedy']}/{len(sources)}"
            if "tokens_per_verify_pass" in row
            else " | | "
        )
        print(f"| {row['precision']} | {row['setting']} | {row['batch1_ms']:.2f} | {row['large_batch_ms']:.2f} "
              f"| {row['bleu']:.2f} | {spec} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
