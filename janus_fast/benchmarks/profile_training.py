"""Training throughput of the three objectives in one run, and where one JANUS update spends its time.

    python -m janus_fast.benchmarks.profile_training --data-dir DIR [--updates 12] [--threads 1] [--precision auto]

Builds the 7.7M-parameter Multi30k model (random init, the shipped model's tokenizer), runs
``--updates`` optimizer updates of each objective on the same training batches (``--max-tokens``
per batch, span masking) after two warm-up updates, and prints target tokens/s for ar, cmlm and
janus and their ratios. ``--profile`` adds a torch.profiler table of janus updates (ops by self CPU
time).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

from janus_fast.checkpoint import load_tokenizer
from janus_fast.data import ParallelDataset, corpus_path, read_parallel
from janus_fast.model import JanusConfig, JanusModel
from janus_fast.training.train import TrainConfig, batch_loss, use_bf16
from janus_fast.translator import DEFAULT_MODEL_DIR


def run_updates(objective: str, data: ParallelDataset, batches: list[list[int]], args: argparse.Namespace) -> float:
    """Target tokens/s of ``len(batches) - 2`` timed updates (the first two warm up)."""
    torch.manual_seed(0)
    model = JanusModel(JanusConfig(vocab_size=8000, max_source_positions=128, max_target_positions=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    config = TrainConfig(objective=objective, precision=args.precision)
    generator = torch.Generator().manual_seed(1)
    bf16 = use_bf16(args.precision)
    tokens, start = 0, 0.0
    for step, indices in enumerate(batches):
        if step == 2:
            tokens, start = 0, time.perf_counter()
        batch = data.collate(indices)
        loss, _ = batch_loss(model, model, batch, config, generator, bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tokens += batch.num_target_tokens
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="Multi30k-style corpus folder (train.de.gz, train.en.gz)")
    parser.add_argument("--updates", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--objectives", default="ar,cmlm,janus")
    parser.add_argument("--profile", action="store_true", help="also profile janus updates")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = load_tokenizer(DEFAULT_MODEL_DIR)
    sources, targets = read_parallel(
        corpus_path(args.data_dir, "train", "de"), corpus_path(args.data_dir, "train", "en"), 4000
    )
    data = ParallelDataset(tokenizer.encode_batch(sources), tokenizer.encode_batch(targets), 128, 128)
    batches = data.batches(args.max_tokens, torch.Generator().manual_seed(3))[: args.updates + 2]
    print(f"{os.cpu_count()} CPUs, {args.threads} thread(s), bf16 autocast: {use_bf16(args.precision)}")
    speeds = {}
    for objective in args.objectives.split(","):
        speeds[objective] = run_updates(objective, data, batches, args)
        print(f"{objective:6s} {speeds[objective]:8.0f} target tokens/s")
    if "ar" in speeds:
        for objective, speed in speeds.items():
            print(f"{objective} / ar: {speed / speeds['ar']:.2f}x")
    if args.profile:
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            run_updates("janus", data, batches[:6], args)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
