"""CTranslate2 side by side with the engine (``janus-fast bench --compare ctranslate2``).

CTranslate2 is what someone who wants fast CPU translation uses today. It cannot load a JANUS
model, so this builds a CTranslate2 transformer of the SAME shape (layers, d_model, heads, FFN,
vocabulary, pre-norm, GELU, biases, shared embeddings) with random weights and times its AR greedy
search on the same source lengths, forced to the same output lengths as the engine's AR greedy
output (``min_decoding_length = max_decoding_length``), at batch 1 and in the same large batches.
Its BLEU means nothing (random weights); only its time is compared.

The timing runs in a process of its own that never imports torch (this file run as a script): in
the same process as torch the two OpenMP pools compete and CTranslate2 runs several times slower.
ctranslate2 is an optional extra: ``pip install ctranslate2``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # run as a script, this file imports neither torch nor janus_fast
    from janus_fast.model import JanusConfig

INSTALL_HINT = "ctranslate2 is not installed; run: pip install 'ctranslate2>=4' (or pip install 'janus_fast[compare]')"


def ctranslate2_available() -> bool:
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return False
    return True


def build_model(config: JanusConfig, directory: str, seed: int = 0) -> None:
    """Save a random-weight CTranslate2 transformer shaped like ``config`` into ``directory``."""
    from ctranslate2 import specs

    rng = np.random.default_rng(seed)
    d, ffn, vocab = config.d_model, config.ffn_dim, config.vocab_size
    spec = specs.TransformerSpec.from_config(
        (config.encoder_layers, config.decoder_layers),
        config.num_heads,
        pre_norm=True,
        activation=specs.Activation.GELU,
    )

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 0.05, shape).astype(np.float32)

    def linear(spec_linear, out_features: int, in_features: int) -> None:
        spec_linear.weight = normal(out_features, in_features)
        spec_linear.bias = normal(out_features)

    def norm(spec_norm) -> None:
        spec_norm.gamma = np.ones(d, np.float32)
        spec_norm.beta = np.zeros(d, np.float32)

    embeddings = normal(vocab, d)
    for layer in spec.encoder.layer:
        norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * d, d)
        linear(layer.self_attention.linear[1], d, d)
        norm(layer.ffn.layer_norm)
        linear(layer.ffn.linear_0, ffn, d)
        linear(layer.ffn.linear_1, d, ffn)
    for layer in spec.decoder.layer:
        norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * d, d)
        linear(layer.self_attention.linear[1], d, d)
        norm(layer.attention.layer_norm)
        linear(layer.attention.linear[0], d, d)
        linear(layer.attention.linear[1], 2 * d, d)
        linear(layer.attention.linear[2], d, d)
        norm(layer.ffn.layer_norm)
        linear(layer.ffn.linear_0, ffn, d)
        linear(layer.ffn.linear_1, d, ffn)
    norm(spec.encoder.layer_norm)
    norm(spec.decoder.layer_norm)
    spec.encoder.embeddings[0].weight = embeddings
    spec.decoder.embeddings.weight = embeddings
    spec.decoder.projection.weight = embeddings
    spec.decoder.projection.bias = np.zeros(vocab, np.float32)
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 3)]
    spec.register_source_vocabulary(words)
    spec.register_target_vocabulary(words)
    spec.validate()
    spec.optimize(quantization=None)
    os.makedirs(directory, exist_ok=True)
    spec.save(directory)


def time_in_this_process(job: dict) -> dict:
    """Seconds for the batch-1 sentences and for all sentences in large batches, per compute type.

    job: model_dir, source_lengths, output_lengths (tokens incl. eos), batch1 (count), batches
    (sentence indices per large batch, as the engine's), threads, compute_types, repeats, beam_size
    (1 when absent: greedy).
    """
    import ctranslate2

    lengths, outputs = job["source_lengths"], job["output_lengths"]
    sources = [[f"w{(i * 7 + j) % 4000}" for j in range(max(1, n))] for i, n in enumerate(lengths)]
    batches = job["batches"]
    results = {}
    for compute_type in job["compute_types"]:
        translator = ctranslate2.Translator(
            job["model_dir"], device="cpu", compute_type=compute_type, intra_threads=job["threads"], inter_threads=1
        )

        def decode(indices: list[int], translator=translator) -> int:
            """Decode these sentences as one batch; the decoder steps of all its sentences (each runs
            ``steps`` steps: as many tokens, no eos, as the engine's tokens + eos)."""
            steps = max(outputs[i] for i in indices)  # one length for the whole batch: CTranslate2's options
            found = translator.translate_batch(
                [sources[i] for i in indices],
                beam_size=job.get("beam_size", 1),
                max_decoding_length=steps,
                min_decoding_length=steps,
            )
            return sum(len(result.hypotheses[0]) for result in found)

        decode([0])  # warm-up
        batch1, large = [], []
        for _ in range(job["repeats"]):
            start = time.perf_counter()
            for i in range(job["batch1"]):
                decode([i])
            batch1.append(time.perf_counter() - start)
            start = time.perf_counter()
            batch_tokens = sum(decode(indices) for indices in batches)
            large.append(time.perf_counter() - start)
        results[compute_type] = {
            "batch1_seconds": float(np.median(batch1)),
            "batch_seconds": float(np.median(large)),
            "batch_output_tokens": batch_tokens,
        }
    return results


def time_ctranslate2(
    config: JanusConfig,
    source_lengths: list[int],
    output_lengths: list[int],
    batch1: int,
    max_batch_tokens: int,
    threads: int,
    repeats: int = 1,
    compute_types: tuple[str, ...] = ("float32", "int8"),
    beam_size: int = 1,
) -> dict:
    """Build the same-shape model and time it in a subprocess (greedy, or beam search of ``beam_size``
    with every hypothesis forced to the same length); {compute_type: {batch1_seconds, batch_seconds}}."""
    if not ctranslate2_available():
        raise RuntimeError(INSTALL_HINT)
    from janus_fast.translator import length_sorted_batches  # the engine's own batching

    # batched by the forced output length (CTranslate2 forces one length on a whole batch): the
    # closest to the engine's work that its options allow (see large_batch_figures)
    batches = length_sorted_batches([[0] * n for n in output_lengths], max_batch_tokens)
    with tempfile.TemporaryDirectory() as directory:
        model_dir = os.path.join(directory, "model")
        build_model(config, model_dir)
        job = dict(
            model_dir=model_dir,
            source_lengths=source_lengths,
            output_lengths=output_lengths,
            batch1=min(batch1, len(source_lengths)),
            batches=batches,
            threads=threads,
            compute_types=list(compute_types),
            repeats=repeats,
            beam_size=beam_size,
        )
        job_path = os.path.join(directory, "job.json")
        with open(job_path, "w") as handle:
            json.dump(job, handle)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        result = subprocess.run(
            [sys.executable, os.path.abspath(__file__), job_path],
            capture_output=True,
            text=True,
            env=env,
        )
        if result.returncode != 0:
            raise RuntimeError(f"CTranslate2 timing failed:\n{result.stderr[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


def large_batch_figures(timing: dict, output_lengths: list[int]) -> dict:
    """CTranslate2's large-batch ms per sentence, for the engine's work.

    CTranslate2 forces one output length on a whole batch (``min_decoding_length``), the longest of
    its sentences, where the engine forces each sentence to its own; its batches, sorted by that
    length, therefore decode somewhat more tokens than the engine's (on the Multi30k test set 1.16x;
    none with sources of one length, ``bench --shape --lengths N``). The time is scaled by the
    engine's tokens over CTranslate2's, which favours CTranslate2 slightly (a longer output's
    tokens cost more: attention over a longer prefix). timing: ``time_ctranslate2``'s entry of one
    compute type; output_lengths: the engine's, eos included."""
    work = timing["batch_output_tokens"] / sum(output_lengths)
    seconds = timing["batch_seconds"] / work
    return {
        "batch_ms_per_sentence": 1e3 * seconds / len(output_lengths),
        "batch_sentences_per_second": len(output_lengths) / seconds,
        "ctranslate2_extra_work": work,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="time CTranslate2 for janus-fast bench (internal)")
    parser.add_argument("job", help="job.json written by time_ctranslate2")
    args = parser.parse_args(argv)
    with open(args.job) as handle:
        job = json.load(handle)
    print(json.dumps(time_in_this_process(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
