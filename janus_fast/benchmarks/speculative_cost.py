"""Where speculative decoding pays on the CPU: the cost of its passes against AR steps, by model size.

Speculative decoding replaces one AR step per token with, per round, one NAR draft pass over the
sentence and one AR verification pass over the drafted tokens. It pays when such a pass costs far
less than the steps it replaces: when a step is bound by streaming the weights (large models,
several threads) rather than by arithmetic (small models whose weights stay in cache). This module
times the three native passes on random JANUS models of several shapes (the times do not depend
on the weights' values) and combines them with an acceptance profile measured on a trained model
(rounds per sentence, tokens per round) into the time speculative decoding would take per
sentence, next to AR greedy's. Acceptance cannot be measured on random weights; the projection says
which acceptance it assumes.

    python -m janus_fast.benchmarks.speculative_cost --precision int8 --threads 1
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from janus_fast.benchmarks.timing import median_seconds
from janus_fast.model import JanusConfig, JanusModel
from janus_fast.native.cpu_features import cpu_description
from janus_fast.native.decoder import NativeDecoder, cpu_isa

# (name, d_model, heads, ffn, layers each side); vocabulary 8,000 as the shipped model
SHAPES = (
    ("shipped (d256, 3+3)", 256, 4, 1024, 3),
    ("transformer-base (d512, 6+6)", 512, 8, 2048, 6),
    ("transformer-big (d1024, 6+6)", 1024, 16, 4096, 6),
)


def pass_times(config: JanusConfig, weight_type: str, target_length: int, verified: int, source_length: int = 14,
               repeats: int = 20) -> dict[str, float]:  # fmt: skip
    """Median seconds at batch 1 of: one AR greedy step (mid-sentence), one verification pass of
    ``verified`` + 1 new tokens, one draft pass over ``target_length`` positions projecting
    ``verified`` of them, and the encoder."""
    torch.manual_seed(0)
    model = JanusModel(config).eval()
    native = NativeDecoder.for_model(model, weight_type)
    src = torch.randint(5, config.vocab_size, (1, source_length))
    lengths = torch.tensor([source_length])
    encoder_out = native.encode(src, lengths)
    memory = NativeDecoder.memory(encoder_out)
    banned = torch.tensor([config.mask_id, config.pad_id, config.bos_id])
    middle = target_length // 2
    caches = model.new_caches(1, target_length + verified + 2, encoder_out.states)
    not_forced = torch.zeros(1, dtype=torch.bool)

    def step() -> None:
        native.ar_greedy_step(torch.tensor([7]), middle, memory, caches, banned, not_forced, config.eos_id)

    new = torch.randint(5, config.vocab_size, (verified + 1,))
    offsets, cached = torch.tensor([0, verified + 1]), torch.tensor([middle])
    forced = torch.zeros(verified + 1, dtype=torch.bool)

    def verify() -> None:
        native.ar_extend(new, offsets, cached, memory, caches, banned, forced, config.eos_id)

    tokens = torch.randint(5, config.vocab_size, (target_length,))
    tokens[target_length - 1 - verified : target_length - 1] = config.mask_id
    positions = torch.arange(target_length)
    outputs = (tokens == config.mask_id).nonzero().squeeze(1)
    row_offsets = F.pad(torch.tensor([target_length]), (1, 0))

    def draft() -> None:
        native.nar_fill(tokens, positions, row_offsets, memory, outputs, config.mask_id)

    def encode() -> None:
        native.encode(src, lengths)

    return {name: median_seconds(f, repeats) for name, f in
            (("step", step), ("verify", verify), ("draft", draft), ("encode", encode))}  # fmt: skip


def projection(times: dict[str, float], target_length: int, rounds: float) -> dict[str, float]:
    """Milliseconds per sentence: AR greedy (target_length - 1 steps) and speculative (``rounds``
    draft + verification passes), both with the encoder."""
    greedy = times["encode"] + (target_length - 1) * times["step"]
    speculative = times["encode"] + rounds * (times["draft"] + times["verify"])
    return {"greedy_ms": 1e3 * greedy, "speculative_ms": 1e3 * speculative, "ratio": speculative / greedy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="int8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--target-length", type=int, default=16, help="tokens with bos and eos (shipped: ~15)")
    parser.add_argument("--verified", type=int, default=8, help="drafted tokens verified per round (max_verify)")
    parser.add_argument("--rounds", type=float, default=4.1, help="rounds per sentence (shipped model: ~4.1)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name, d, heads, ffn, layers in SHAPES:
        config = JanusConfig(vocab_size=8000, d_model=d, num_heads=heads, ffn_dim=ffn, encoder_layers=layers,
                             decoder_layers=layers, dropout=0.0)  # fmt: skip
        times = pass_times(config, args.precision, args.target_length, args.verified)
        rows.append({"shape": name, **{f"{k}_ms": 1e3 * v for k, v in times.items()},
                     **projection(times, args.target_length, args.rounds)})  # fmt: skip
    report = {"cpu": cpu_description(), "native_isa": cpu_isa(), **vars(args), "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"CPU: {report['cpu']}; native products: {report['native_isa']}; {args.precision}, {args.threads} thread(s)")
    print(f"projection: {args.target_length} tokens, {args.rounds} rounds of {args.verified} verified drafted tokens")
    print(
        "| shape | AR step ms | verify pass ms | draft pass ms | encoder ms | AR greedy ms/sent "
        "| speculative ms/sent | speculative / greedy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['shape']} | {row['step_ms']:.3f} | {row['verify_ms']:.3f} | {row['draft_ms']:.3f} "
            f"| {row['encode_ms']:.3f} | {row['greedy_ms']:.2f} | {row['speculative_ms']:.2f} | {row['ratio']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
