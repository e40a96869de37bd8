"""torch.profiler breakdown of one decoding setting at batch 1 (the evidence behind the README's
"why a target is missed" lines).

    python -m janus_fast.benchmarks.profile_decoding --data-dir DIR [--model DIR] [--mode nar] [--sentences 30]

Decodes the first ``--sentences`` test sentences one at a time with the chosen decoder (engine by
default) and prints the ops by self CPU time, the share of time spent in matmuls
(``addmm``/``mm``/``bmm``/dynamic int8 linear) and the size of the model's floating-point
parameters (the fp32 weights every decoder pass streams; an int8 copy's packed weights are not
counted).
"""

from __future__ import annotations

import argparse
import os
import time

from torch.profiler import ProfilerActivity, profile

from janus_fast.data import read_lines
from janus_fast.translator import Translator

MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "quantized::linear_dynamic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--data-dir", required=True, help="Multi30k folder (test_2016_flickr.de.gz)")
    parser.add_argument("--mode", choices=("nar", "ar"), default="nar")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--length-beam", type=int, default=3)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--decoder", choices=("engine", "reference"), default="engine")
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32")
    parser.add_argument("--sentences", type=int, default=30)
    args = parser.parse_args()

    translator = Translator.from_pretrained(args.model, decoder=args.decoder, precision=args.precision)
    sources = read_lines(os.path.join(args.data_dir, "test_2016_flickr.de.gz"))[: args.sentences]
    options = {"mode": args.mode, "iterations": args.iterations, "length_beam": args.length_beam, "beam": args.beam}
    translator.translate(sources[:2], **options)  # warm-up
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for sentence in sources:
            translator.translate([sentence], **options)
    seconds = time.perf_counter() - start
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    matmul = sum(event.self_cpu_time_total for event in events if event.key in MATMUL_OPS)
    weights = sum(p.numel() * p.element_size() for p in translator.model.parameters())
    print(f"{args.decoder} {args.precision} {options}: {1e3 * seconds / len(sources):.1f} ms/sentence (profiled)")
    print(f"matmul ops: {100 * matmul / total:.0f}% of self CPU time; floating-point parameters {weights / 1e6:.1f} MB")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
