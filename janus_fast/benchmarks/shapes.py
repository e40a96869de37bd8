"""The engine at the sizes users bring, without a trained model: ``janus-fast bench --shape``.

A seeded random JANUS model of a given shape (``base``: transformer-base, d 512, FFN 2048, 8 heads,
6+6 layers, vocabulary 32,000; ``big``: d 1024, FFN 4096, 16 heads; or ``D,FFN,HEADS,ENC,DEC,VOCAB``)
decodes random sources whose lengths follow a distribution (``wmt``: log-normal with mean 27
tokens, 3 to 150; ``N``: every source N tokens; or a file of one length per line). Every engine is
made to do the same work: the outputs are forced to the source's length (AR: eos made unreachable
by a zero eos embedding, which a random model's best logit always beats, and the length limit set
to the source length; NAR: the length head replaced by one that predicts the source length, its
neighbours next), and CTranslate2's same-shape random model is forced to the engine's AR output
lengths (``ctranslate2_compare``). Only times mean something here (random weights, no BLEU). The
speculative row's acceptance is a random model's and means nothing either: such a model's outputs
are degenerate (one token over and over), which its NAR drafts guess right; the speed speculative
decoding reaches on a trained model follows from its acceptance there
(``benchmarks.speculative_cost``).

Each (precision, threads) pair is measured in a process of its own (``python -m
janus_fast.benchmarks.shapes --worker JOB``), so that its peak resident memory (loading, converting
and decoding) is its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys

import torch

from janus_fast.arguments import check_int, spelled_as_flags
from janus_fast.benchmarks.tables import markdown_table, number
from janus_fast.memory import check_fits_in_memory
from janus_fast.model import JanusConfig, JanusModel

SHAPES = {
    "base": dict(d_model=512, ffn_dim=2048, num_heads=8, encoder_layers=6, decoder_layers=6, vocab_size=32000),
    "big": dict(d_model=1024, ffn_dim=4096, num_heads=16, encoder_layers=6, decoder_layers=6, vocab_size=32000),
}
SHAPE_FIELDS = ("d_model", "ffn_dim", "num_heads", "encoder_layers", "decoder_layers", "vocab_size")
MAX_POSITIONS = 256  # room for the longest WMT-like source (150) and its forced output
WMT_MEAN, WMT_SIGMA, WMT_RANGE = 27.0, 0.6, (3, 150)
# the rows: name -> decoding options (outputs forced to the source length)
FORCED = {"max_len_a": 1.0, "max_len_b": 1}  # AR: as many words as the source, then eos
NAR_ROW = {"mode": "nar", "collapse_repeats": False}  # repeats kept: the output shows the forced length
ROWS = {
    "AR greedy": {"mode": "ar", "beam": 1, **FORCED},
    "AR beam 4": {"mode": "ar", "beam": 4, **FORCED},
    **{f"NAR T={t} l={lb}": {**NAR_ROW, "iterations": t, "length_beam": lb} for lb in (1, 3) for t in (1, 2, 4, 10)},
    "speculative": {"mode": "spec", **FORCED},
}
DEFAULT_ROWS = ("AR greedy", "AR beam 4", "NAR T=2 l=3", "NAR T=4 l=3", "NAR T=10 l=3", "speculative")


def shape_config(shape: str) -> JanusConfig:
    """The JanusConfig of ``base``, ``big`` or ``D,FFN,HEADS,ENC,DEC,VOCAB`` (ValueError otherwise)."""
    if shape in SHAPES:
        sizes = SHAPES[shape]
    else:
        try:
            values = [int(part) for part in shape.split(",")]
        except ValueError:
            values = []
        if len(values) != len(SHAPE_FIELDS) or min(values) < 1:
            raise ValueError(
                f"--shape {shape!r}: expected base, big or six positive integers D,FFN,HEADS,ENC,DEC,VOCAB"
            )
        sizes = dict(zip(SHAPE_FIELDS, values))
    if sizes["d_model"] % sizes["num_heads"]:
        raise ValueError(
            f"--shape {shape!r}: d_model {sizes['d_model']} is not a multiple of {sizes['num_heads']} heads"
        )
    if sizes["vocab_size"] < 16:
        raise ValueError(f"--shape {shape!r}: a vocabulary of at least 16 entries")
    try:
        with spelled_as_flags(False):  # bench has no --d-model: the field names, after --shape
            return JanusConfig(
                **sizes,
                dropout=0.0,
                max_source_positions=MAX_POSITIONS,
                max_target_positions=MAX_POSITIONS,
                length_offset=True,
            )
    except ValueError as error:
        raise ValueError(f"--shape {shape!r}: {error}") from None


class ForcedLengthModel(JanusModel):
    """A JanusModel whose length head predicts a target of as many words as the source has, then
    one word fewer and one more, whatever the weights (``length_offset`` classes)."""

    def length_logits(self, encoder_out) -> torch.Tensor:  # noqa: ANN001
        classes = self.config.num_length_classes
        logits = torch.full((encoder_out.states.shape[0], classes), -30.0, device=encoder_out.states.device)
        same_words = classes // 2 + 2  # target length (bos and eos counted) = source length + 2
        logits[:, same_words] = 0.0
        logits[:, same_words - 1 : same_words + 2 : 2] = -1.0
        return logits


def random_model(config: JanusConfig, seed: int = 0) -> ForcedLengthModel:
    """A seeded random model of ``config`` whose outputs have the forced lengths (eos unreachable)."""
    torch.manual_seed(seed)
    model = ForcedLengthModel(config).eval()
    with torch.no_grad():
        model.embed_tokens.weight[config.eos_id].zero_()
    return model


def source_lengths(spec: str, count: int, seed: int = 0) -> list[int]:
    """``count`` source lengths (tokens, eos excluded): ``wmt`` (log-normal, mean 27, within 3 ..
    150), an integer N, or a file of one integer per line (cycled)."""
    generator = torch.Generator().manual_seed(seed)
    if spec == "wmt":
        mu = math.log(WMT_MEAN) - WMT_SIGMA**2 / 2
        draws = torch.empty(count).log_normal_(mu, WMT_SIGMA, generator=generator)
        return [min(WMT_RANGE[1], max(WMT_RANGE[0], round(float(x)))) for x in draws]
    if spec.isdigit():
        length = int(spec)
        if not 1 <= length <= MAX_POSITIONS - 2:
            raise ValueError(f"--lengths {spec}: a length of 1 to {MAX_POSITIONS - 2} tokens")
        return [length] * count
    values = []
    try:
        with open(spec, "rb") as handle:
            while len(values) < count:  # only the lengths used are read, each line at most 64 bytes
                line = handle.readline(64)
                if not line:
                    break
                if line.strip():
                    values.append(int(line.decode("ascii")))
    except (OSError, ValueError) as error:
        raise ValueError(f"--lengths {spec}: expected wmt, an integer or a file of integers ({error})") from error
    if not values or not all(1 <= v <= MAX_POSITIONS - 2 for v in values):
        raise ValueError(f"--lengths {spec}: lengths of 1 to {MAX_POSITIONS - 2} tokens, one per line")
    return [values[i % len(values)] for i in range(count)]


def random_sources(config: JanusConfig, lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Random word ids (no special symbol) of the given lengths."""
    generator = torch.Generator().manual_seed(seed + 1)
    first = max(config.pad_id, config.bos_id, config.eos_id, config.unk_id, config.mask_id) + 1
    return [torch.randint(first, config.vocab_size, (n,), generator=generator).tolist() for n in lengths]


class _Vocabulary:
    """What Translator needs of a tokenizer to decode token ids."""

    def __init__(self, size: int) -> None:
        self.vocab_size = size


def _peak_rss_mb() -> float:
    """This process's own peak resident memory: VmHWM (Linux; ru_maxrss would carry the parent's
    high-water mark into a child started by fork + exec), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(job: dict) -> dict:
    """Time ``job["rows"]`` at one precision and thread count; the rows and this process's peak RSS."""
    from janus_fast.benchmarks.decoding import Setting, flops_per_sentence, matmul_peak_gflops, speculative_acceptance
    from janus_fast.benchmarks.timing import median_seconds
    from janus_fast.translator import Translator

    torch.set_num_threads(job["threads"])
    config = JanusConfig(**job["config"])
    model = random_model(config, job["seed"])
    translator = Translator(model, _Vocabulary(config.vocab_size), job["max_batch_tokens"], precision=job["precision"])
    if translator.choice.can_release_weights:  # as janus-fast translate does: the weights once
        translator.choice.release_weights()
    rss_loaded = _peak_rss_mb()
    sources = random_sources(config, job["lengths"], job["seed"])
    batch1 = sources[: job["batch1"]]
    source_lengths = [len(ids) for ids in translator.wrap_sources(sources)]
    peak = matmul_peak_gflops()
    rows = []
    for name in job["rows"]:
        options = translator.resolve_options(**ROWS[name])

        def one_by_one(options: object = options) -> None:
            for source in batch1:
                translator.translate_ids([source], options)

        def all_at_once(options: object = options) -> object:
            return translator.translate_ids(sources, options)

        translator.translate_ids(batch1[:1], options)  # warm-up
        batch1_seconds = median_seconds(one_by_one, job["repeats"])
        found = all_at_once()
        batch_seconds = median_seconds(all_at_once, job["repeats"], warmup=False)
        row = {
            "row": name,
            "precision": job["precision"],
            "threads": job["threads"],
            "batch1_ms_per_sentence": 1e3 * batch1_seconds / len(batch1),
            "batch_ms_per_sentence": 1e3 * batch_seconds / len(sources),
            "output_tokens_per_sentence": sum(len(t) for t in found.tokens) / len(sources),
        }
        # the large batch's matrix-product work (bos and eos counted as the decoder sees them), per
        # second, against this process's fp32 torch.mm peak at the same threads
        flops = sum(
            flops_per_sentence(config, Setting(options), source, len(tokens) + 2)
            for source, tokens in zip(source_lengths, found.tokens)
        )
        row["achieved_gflops"] = flops / batch_seconds / 1e9
        row["of_fp32_matmul_peak"] = row["achieved_gflops"] / peak
        if name == "speculative":
            stats = speculative_acceptance(translator, translator.wrap_sources(batch1), options)
            row["tokens_per_verify_pass"] = stats.tokens_per_round
        if name in ("AR greedy", "AR beam 4"):
            row["output_lengths"] = [len(t) + 1 for t in found.tokens]  # + eos, as CTranslate2 counts
        rows.append(row)
    weight_bytes = {"fp32": 4, "bf16": 2, "int8": 1}[job["precision"]]
    return {
        "rows": rows,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_loading_mb": rss_loaded,
        "parameters": model.num_parameters,
        "weights_mb_at_precision": model.num_parameters * weight_bytes / 2**20,
    }


def run_shape_bench(
    shape: str,
    lengths: str = "wmt",
    sentences: int = 64,
    batch1: int = 8,
    threads: tuple[int, ...] = (1,),
    precisions: tuple[str, ...] = ("fp32", "int8"),
    rows: tuple[str, ...] = DEFAULT_ROWS,
    repeats: int = 1,
    max_batch_tokens: int = 4096,
    compare: tuple[str, ...] = (),
    seed: int = 0,
) -> dict:
    """Every (precision, threads) pair in its own process; CTranslate2 (``compare``) at the same
    threads on the engine's AR greedy output lengths. Returns {"rows": [...], ...}."""
    from janus_fast.benchmarks.ctranslate2_compare import (
        INSTALL_HINT,
        ctranslate2_available,
        large_batch_figures,
        time_ctranslate2,
    )
    from janus_fast.native.cpu_features import cpu_description

    for name, value in (("sentences", sentences), ("batch1", batch1), ("repeats", repeats)):
        check_int(name, value, 1)
    check_int("max_batch_tokens", max_batch_tokens, 1)
    if not threads or not precisions or not rows:
        raise ValueError("threads, precisions and rows each need at least one entry")
    for count in threads:
        check_int("threads", count, 1)
    if set(precisions) - {"fp32", "bf16", "int8"}:
        raise ValueError(f"precisions {precisions}: each fp32, bf16 or int8")
    config = shape_config(shape)
    parameters = config.parameter_count()  # refused here, in one line, not by the worker it would kill
    check_fits_in_memory(
        4 * parameters,
        f"--shape {shape}: a model of {parameters / 1e6:.0f}M parameters (fp32)",
        "choose a smaller shape",
    )
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {sorted(ROWS)}")
    if "ctranslate2" in compare and not ctranslate2_available():
        raise ValueError(INSTALL_HINT)
    drawn = source_lengths(lengths, sentences, seed)
    report: dict = {"shape": shape, "config": dataclasses.asdict(config), "lengths": lengths, "rows": [], "memory": []}
    report["mean_source_tokens"] = sum(drawn) / len(drawn)
    report["cpu"] = cpu_description()
    for precision in precisions:
        for count in threads:
            job = {
                "config": dataclasses.asdict(config),
                "seed": seed,
                "lengths": drawn,
                "batch1": min(batch1, sentences),
                "threads": count,
                "precision": precision,
                "rows": list(rows),
                "repeats": repeats,
                "max_batch_tokens": max_batch_tokens,
            }
            result = subprocess.run(  # the job on stdin: one length per sentence outgrows a command line
                [sys.executable, "-m", "janus_fast.benchmarks.shapes", "--worker", "-"],
                input=json.dumps(job),
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": str(count)},
            )
            if result.returncode != 0:
                last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
                if last.startswith(("ValueError: ", "MemoryError")):  # the worker's refusal, said as one line
                    said = last.partition(": ")[2] or last  # a bare "MemoryError" has no text after it
                    raise ValueError(f"--shape {shape} ({precision}, {count} threads): {said}")
                raise RuntimeError(
                    f"shape bench worker ({precision}, {count} threads) failed:\n{result.stderr[-3000:]}"
                )
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            report["rows"] += measured.pop("rows")
            report["memory"].append({"precision": precision, "threads": count, **measured})
            report["parameters"] = measured["parameters"]
    if "ctranslate2" in compare:
        # CTranslate2's greedy and beam 4, each where the engine's row runs, forced to the output
        # lengths of the engine's row (fp32 where measured)
        for name, beam in {"AR greedy": 1, "AR beam 4": 4}.items():
            ours = [r for r in report["rows"] if r["row"] == name]
            if not ours:
                continue
            output_lengths = next((r for r in ours if r["precision"] == "fp32"), ours[0])["output_lengths"]
            for count in threads:
                timings = time_ctranslate2(
                    config, [n + 1 for n in drawn], output_lengths, min(batch1, sentences),
                    max_batch_tokens, count, repeats, beam_size=beam,
                )  # fmt: skip
                for compute_type, timing in timings.items():
                    report["rows"].append(
                        {
                            "row": f"CTranslate2 {name}",
                            "precision": compute_type,
                            "threads": count,
                            "batch1_ms_per_sentence": 1e3 * timing["batch1_seconds"] / min(batch1, sentences),
                            **large_batch_figures(timing, output_lengths),
                        }
                    )
    for row in report["rows"]:
        row.pop("output_lengths", None)
    return report


def format_shape_report(report: dict) -> str:
    """The report as a Markdown table (ms per sentence) and the memory lines."""
    config = report["config"]
    lines = [
        f"shape {report['shape']}: d {config['d_model']}, FFN {config['ffn_dim']}, {config['num_heads']} heads, "
        f"{config['encoder_layers']}+{config['decoder_layers']} layers, vocabulary {config['vocab_size']}, "
        f"{report.get('parameters', 0) / 1e6:.1f}M parameters; sources: {report['lengths']} "
        f"(mean {report['mean_source_tokens']:.1f} tokens), outputs forced to the source length; {report['cpu']}",
    ]
    header = ["row", "precision", "threads", "batch 1 ms/sentence", "large batch ms/sentence"]
    header += ["output tokens", "tokens/verify", "large batch GFLOP/s", "of fp32 mm peak"]
    cells = [
        [row["row"], row["precision"], row["threads"], number(row["batch1_ms_per_sentence"], 1)]
        + [number(row["batch_ms_per_sentence"], 2), number(row.get("output_tokens_per_sentence"), 1, missing="")]
        + [number(row.get("tokens_per_verify_pass"), 2, missing="")]
        + [number(row.get("achieved_gflops"), 1, missing="")]
        + [f"{100 * row['of_fp32_matmul_peak']:.0f}%" if "of_fp32_matmul_peak" in row else ""]
        for row in report["rows"]
    ]
    lines += ["", *markdown_table(header, cells, numeric_from=2)]
    lines.append("")
    for row in report["rows"]:
        if row.get("ctranslate2_extra_work", 1.0) > 1.0:
            lines.append(
                f"{row['row']} {row['precision']}, {row['threads']} thread(s): its large batches (one forced length "
                f"per batch) decoded {row['ctranslate2_extra_work']:.2f}x the engine's tokens; time scaled to the "
                "engine's work (--lengths N: equal work)"
            )
    for memory in report["memory"]:
        lines.append(
            f"memory {memory['precision']}, {memory['threads']} thread(s): peak RSS {memory['peak_rss_mb']:.0f} MB "
            f"(after loading {memory['rss_after_loading_mb']:.0f} MB); weights at this precision "
            f"{memory['weights_mb_at_precision']:.0f} MB"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="a shape bench worker (run by janus-fast bench --shape)")
    parser.add_argument("--worker", required=True, help="the job, as JSON ('-': read it from stdin)")
    args = parser.parse_args()
    job = sys.stdin.read() if args.worker == "-" else args.worker
    print(json.dumps(run_worker(json.loads(job))))


if __name__ == "__main__":
    main()
