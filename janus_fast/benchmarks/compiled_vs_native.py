"""Two ways to compile the engine's CPU decoder passes, timed on the same shapes:

* ``torch.compile`` (Inductor, C++/OpenMP code generation, dynamic shapes) of the PyTorch passes
  (``JanusModel.ar_step``; ``packed_decode`` + the vocabulary projection of the masked positions);
* the native passes (``janus_fast.native.decoder``: one C++ call per pass, fused small ops,
  panel-packed few-row matrix products).

Both against eager PyTorch, at batch 1 (one sentence, length beam 3 for NAR) and at a large batch,
shipped model, the threads torch is set to. Compile time is reported too (the first call).

    python -m janus_fast.benchmarks.compiled_vs_native [--model DIR] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from janus_fast.benchmarks.timing import median_seconds
from janus_fast.decoding.packed import PackedRows, packed_decode
from janus_fast.model import JanusModel
from janus_fast.native.cpu_features import cpu_description
from janus_fast.native.decoder import NativeDecoder
from janus_fast.translator import Translator


def _inputs(model: JanusModel, batch: int, source_length: int, target_length: int, rows_per_sentence: int):
    generator = torch.Generator().manual_seed(0)
    config = model.config
    src = torch.randint(5, config.vocab_size, (batch, source_length), generator=generator)
    src_lengths = torch.full((batch,), source_length)
    rows = batch * rows_per_sentence
    tokens = torch.randint(5, config.vocab_size, (rows, target_length), generator=generator)
    tokens[torch.rand(rows, target_length, generator=generator) < 0.6] = config.mask_id
    lengths = torch.full((rows,), target_length)
    return src, src_lengths, tokens, lengths


def compare(model: JanusModel, repeats: int) -> list[dict]:
    """Milliseconds per call of an AR step and a NAR pass, eager / torch.compile / native."""
    results = []
    native = NativeDecoder.for_model(model)
    for label, batch in (("batch 1", 1), ("large batch", 64)):
        src, src_lengths, tokens, lengths = _inputs(model, batch, 16, 16, 3)
        with torch.inference_mode():
            encoder_out = model.encode(src, src_lengths)
            rows_encoder = encoder_out.select(torch.arange(batch).repeat_interleave(3))
            memory = NativeDecoder.memory(encoder_out)
            rows_memory = NativeDecoder.memory(rows_encoder)
            packed = PackedRows(lengths, tokens.shape[1])
            flat = tokens.reshape(-1).index_select(0, packed.index)
            masked = (flat == model.config.mask_id).nonzero().squeeze(1)
            offsets = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
            step_tokens = torch.full((batch,), model.config.bos_id)

            def eager_nar(tokens=tokens, lengths=lengths, rows_encoder=rows_encoder, packed=packed, masked=masked):
                return model.output_logits(packed_decode(model, tokens, lengths, rows_encoder, packed)[masked])

            def eager_ar(encoder_out=encoder_out, batch=batch, step_tokens=step_tokens):
                caches = model.new_caches(batch, 8, encoder_out.states)
                return model.ar_step(step_tokens, 0, encoder_out, caches)

            def native_nar(flat=flat, packed=packed, offsets=offsets, rows_memory=rows_memory, masked=masked):
                return native.nar_logits(flat, packed.positions, offsets, rows_memory, masked)

            def native_ar(encoder_out=encoder_out, batch=batch, memory=memory, step_tokens=step_tokens):
                caches = model.new_caches(batch, 8, encoder_out.states)
                return native.ar_step(step_tokens, 0, memory, caches)

            compiled = {}
            compile_seconds = {}
            for name, function in (("nar", eager_nar), ("ar", eager_ar)):
                compiled[name] = torch.compile(function, dynamic=True)
                start = time.perf_counter()
                compiled[name]()
                compile_seconds[name] = time.perf_counter() - start
            torch.testing.assert_close(compiled["nar"](), eager_nar(), rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(native_nar(), eager_nar(), rtol=1e-3, atol=1e-3)
            for name, eager, native_pass in (("NAR pass", eager_nar, native_nar), ("AR step", eager_ar, native_ar)):
                key = "nar" if name == "NAR pass" else "ar"
                results.append(
                    {
                        "pass": name,
                        "batch": label,
                        "eager_ms": 1e3 * median_seconds(eager, repeats),
                        "compiled_ms": 1e3 * median_seconds(compiled[key], repeats),
                        "native_ms": 1e3 * median_seconds(native_pass, repeats),
                        "compile_seconds": compile_seconds[key],
                    }
                )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    model = Translator.from_pretrained(args.model).model
    print(f"CPU: {cpu_description()}; {torch.get_num_threads()} threads")
    print("| pass | batch | eager ms | torch.compile ms | native ms | compile s (first call) |")
    print("|---|---|---:|---:|---:|---:|")
    for row in compare(model, args.repeats):
        print(
            f"| {row['pass']} | {row['batch']} | {row['eager_ms']:.2f} | {row['compiled_ms']:.2f} "
            f"| {row['native_ms']:.2f} | {row['compile_seconds']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
