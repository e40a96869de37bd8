"""``janus-fast bench``: reference vs engine, NAR vs AR, measured side by side in one run.

For one model and the Multi30k test set it times every decoding mode at batch 1 (the first
``batch1_sentences`` sentences one at a time) and at a large batch (``max_batch_tokens``), scores
the large-batch output with sacreBLEU, estimates the FLOPs each mode spends per sentence from the
config and the lengths actually decoded, and compares the achieved GFLOP/s with this machine's
fp32 matmul peak measured in the same run.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import statistics
from dataclasses import dataclass

import sacrebleu
import torch

from janus_fast.arguments import check_int
from janus_fast.benchmarks.ctranslate2_compare import (
    INSTALL_HINT,
    ctranslate2_available,
    large_batch_figures,
    time_ctranslate2,
)
from janus_fast.benchmarks.ops import synchronizer
from janus_fast.benchmarks.timing import median_seconds
from janus_fast.data import InputError, corpus_path, read_parallel
from janus_fast.decoding.options import DecodeOptions, SpeculativeOptions, needed_sides
from janus_fast.decoding.speculative import SpeculativeStats
from janus_fast.generation import decode_batch
from janus_fast.model import JanusConfig
from janus_fast.native.cpu_features import cpu_description
from janus_fast.native.decoder import cpu_isa
from janus_fast.output import atomic_write
from janus_fast.translator import Translator

TEST_SPLIT = "test_2016_flickr"  # the split the bench times and scores
NAR_ITERATIONS = (1, 2, 4, 10)
RESCORED_ITERATIONS = (2, 4, 10)  # the engine's NAR rows also run with ar_rescore
RELAXED = ((3, 1.0), (5, 2.0))  # (top k, margin) of the relaxed speculative rows
FAIRSEQ_MAX_ITERS = (4, 9)  # --iter-decode-max-iter of the fairseq-compatible rows (5 and 10 passes)


@dataclass(frozen=True)
class Setting:
    """One row of the table: its decoding options (``DecodeOptions``, every count spelled out),
    whose fields read through the row (``setting.mode``)."""

    options: DecodeOptions

    @staticmethod
    def of(decoder: str, mode: str, **fields: object) -> Setting:
        """The row of ``decoder`` and ``mode``: NAR 10 iterations and length beam 3, AR beam 1 unless given."""
        counts = {"ar": {"beam": 1}, "nar": {"iterations": 10, "length_beam": 3}, "spec": {}}[mode]
        return Setting(DecodeOptions(decoder=decoder, mode=mode, **{**counts, **fields}))

    def __getattr__(self, name: str) -> object:
        return getattr(self.options, name)

    @property
    def translator_key(self) -> str:
        return self.decoder if self.precision == "fp32" else f"{self.decoder} {self.precision}"

    @property
    def name(self) -> str:
        if self.compat == "fairseq" and self.mode == "ar":
            return f"{self.decoder} fairseq-compat AR {'greedy' if self.beam == 1 else f'beam {self.beam}'}"
        if self.compat == "fairseq":
            return f"{self.decoder} fairseq-compat NAR max-iter={self.iterations} lb={self.length_beam}"
        if self.mode == "nar":
            rescore = " + AR rescore" if self.ar_rescore else ""
            return f"{self.translator_key} NAR T={self.iterations} lb={self.length_beam}{rescore}"
        if self.mode == "spec":
            spec = self.speculative
            relaxed = ""
            if spec is not None and spec.relaxed_top_k:
                relaxed = f" relaxed k={spec.relaxed_top_k} m={spec.relaxed_margin:g}"
            always = " in every batch" if spec is not None and spec.speculate_up_to == 0 else ""
            return f"{self.translator_key} speculative{relaxed}{always}"
        return f"{self.translator_key} AR {'greedy' if self.beam == 1 else f'beam {self.beam}'}"


def settings(compat: str = "janus", has_nar: bool = True) -> list[Setting]:
    """The rows of the table: for ``compat="fairseq"`` (a converted fairseq model) the
    fairseq-compatible mask-predict, or for a plain transformer (``has_nar`` False) its beam
    search (greedy and beam 5); otherwise every decoder and mode of this project."""
    if compat == "fairseq" and not has_nar:
        return [
            Setting.of(decoder, "ar", beam=beam, compat="fairseq")
            for decoder in ("reference", "engine")
            for beam in (1, 5)
        ]
    if compat == "fairseq":
        return [
            Setting.of(decoder, "nar", iterations=t, compat="fairseq")
            for decoder in ("reference", "engine")
            for t in FAIRSEQ_MAX_ITERS
        ]
    rows = [Setting.of(decoder, "nar", iterations=t) for decoder in ("reference", "engine") for t in NAR_ITERATIONS]
    rows += [Setting.of(decoder, "ar", beam=beam) for decoder in ("reference", "engine") for beam in (1, 4)]
    rows += [Setting.of("engine", "nar", iterations=t, ar_rescore=True) for t in RESCORED_ITERATIONS]
    rows += [Setting.of("engine", "spec")]  # AR greedy's steps in batches of more than SPECULATE_UP_TO sentences
    rows += [Setting.of("engine", "spec", speculative=SpeculativeOptions(speculate_up_to=0))]  # speculation's cost
    rows += [
        Setting.of("engine", "spec", speculative=SpeculativeOptions(relaxed_top_k=k, relaxed_margin=m))
        for k, m in RELAXED
    ]
    for precision in ("bf16", "int8"):
        rows += [Setting.of("engine", "nar", iterations=t, precision=precision) for t in NAR_ITERATIONS]
        rows += [Setting.of("engine", "ar", beam=1, precision=precision)]
        rows += [Setting.of("engine", "spec", precision=precision)]
    rows += [Setting.of("engine", "nar", iterations=4, precision="bf16", ar_rescore=True)]
    return rows


def matmul_peak_gflops(size: int = 1024, repeats: int = 5, device: str = "cpu") -> float:
    """Measured fp32 GFLOP/s of a square torch.mm on ``device`` (median of ``repeats``)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats, synchronize=synchronizer(device)) / 1e9


def flops_per_sentence(config: JanusConfig, setting: Setting, source_length: float, target_length: float) -> float:
    """Matmul FLOPs per sentence (projections, FFN, attention scores/values, vocabulary).

    source_length S and target_length L (pieces, bos/eos included) are averages over the data.
    """
    d, ffn, vocab = config.d_model, config.ffn_dim, config.vocab_size
    encoder = config.encoder_layers * source_length * (2 * 4 * d * d + 2 * 2 * d * ffn + 2 * 2 * source_length * d)
    cross_kv = config.decoder_layers * source_length * 2 * 2 * d * d

    def decoder_rows(rows: float, keys: float) -> float:
        per_row = 2 * 4 * d * d + 2 * 2 * d * ffn + 2 * 2 * (keys + source_length) * d
        return config.decoder_layers * rows * per_row

    if setting.compat == "fairseq" and setting.mode == "nar":  # max-iter + 1 passes, all positions projected
        rows = setting.length_beam * target_length
        passes = setting.iterations + 1
        return encoder + cross_kv + passes * (decoder_rows(rows, target_length) + 2 * rows * vocab * d)
    if setting.mode == "nar":
        rows = setting.length_beam * target_length
        masked_fraction = (setting.iterations + 1) / (2 * setting.iterations) if setting.decoder == "engine" else 1.0
        per_iteration = decoder_rows(rows, target_length) + 2 * rows * masked_fraction * vocab * d
        # AR rescoring: both streams over each candidate's L - 1 tokens (~L/2 keys), every query projected
        contexts = setting.length_beam * (target_length - 1)
        rescore = decoder_rows(2 * contexts, target_length / 2) + 2 * contexts * vocab * d if setting.ar_rescore else 0
        return encoder + cross_kv + setting.iterations * per_iteration + rescore
    steps = target_length - 1  # speculative: counted as the AR greedy steps it replaces
    # each step runs a content row and a query row (two streams; a plain transformer: the content
    # row alone) over a cache of ~L/2 keys
    streams = 2 if config.has_nar else 1
    beam = setting.beam if setting.mode == "ar" else 1
    per_step = beam * (decoder_rows(streams, target_length / 2) + 2 * vocab * d)
    return encoder + cross_kv + steps * per_step


def _time_setting(
    translator: Translator, setting: Setting, sources: list[str], batch1: list[str], repeats: int
) -> tuple[float, float, list[str]]:
    """Median of ``repeats``: seconds for ``batch1`` one sentence at a time, seconds for all
    ``sources`` in large batches, and the large-batch translations (from the warm-up run)."""
    options = setting.options
    translator.translate(batch1[:2], options)  # warm-up (allocator, oneDNN primitive caches)
    batch1_seconds = median_seconds(lambda: [translator.translate([s], options) for s in batch1], repeats, warmup=False)
    hypotheses = translator.translate(sources, options)
    batch_seconds = median_seconds(lambda: translator.translate(sources, options), repeats, warmup=False)
    return batch1_seconds, batch_seconds, hypotheses


def run_bench(
    model_dir: str | None,
    data_dir: str,
    source_lang: str = "de",
    target_lang: str = "en",
    limit: int = 1000,
    batch1_sentences: int = 100,
    max_batch_tokens: int = 4096,
    repeats: int = 1,
    device: str = "cpu",
    compare: tuple[str, ...] = (),
    compat: str = "janus",
) -> dict:
    """Measure every setting on the test set; returns {"rows": [...], "ratios": {...}, ...}.

    On a CUDA ``device`` the bf16/int8 rows (CPU features) are left out and timings synchronize.
    ``compare=("ctranslate2",)`` adds CTranslate2's AR greedy on a same-shape model, timed in its
    own process with the engine's AR greedy output lengths (``ctranslate2_compare``).
    ``compat="fairseq"`` measures fairseq-generate's mask-predict (``settings``) on a converted
    fairseq model; its test files must then be tokenised as the model's training data was."""
    for name, value in (
        ("limit", limit),
        ("batch1_sentences", batch1_sentences),
        ("max_batch_tokens", max_batch_tokens),
        ("repeats", repeats),
    ):
        check_int(name, value, 1)
    if compat not in ("janus", "fairseq"):
        raise ValueError(f"compat must be 'janus' or 'fairseq', got {compat!r}")
    for tool in compare:
        if tool != "ctranslate2":
            raise ValueError(f"unknown tool to compare with: {tool!r} (known: ctranslate2)")
        if not ctranslate2_available():
            raise InputError(INSTALL_HINT)
    sources, references = read_parallel(
        corpus_path(data_dir, TEST_SPLIT, source_lang), corpus_path(data_dir, TEST_SPLIT, target_lang), limit
    )
    if not sources:
        raise InputError(f"{data_dir}: its {TEST_SPLIT} files hold no sentences to time")
    translators = {
        decoder: Translator.from_pretrained(model_dir, device, max_batch_tokens=max_batch_tokens, decoder=decoder)
        for decoder in ("reference", "engine")
    }
    if device == "cpu" and compat == "janus":
        for precision in ("bf16", "int8"):
            try:
                translators[f"engine {precision}"] = Translator(
                    translators["engine"].model, translators["engine"].tokenizer, max_batch_tokens, precision=precision
                )
            except ValueError:  # bf16 without the native decoder
                pass
    config = translators["engine"].model.config
    tokenizer = translators["engine"].tokenizer
    source_length = statistics.mean(len(tokenizer.encode(s)) for s in sources)
    peak = matmul_peak_gflops(device=device)
    rows = []
    greedy_outputs: list[str] = []
    greedy_by_key: dict[str, list[str]] = {}  # engine AR greedy's output at each precision
    trained = config.trained_sides  # a model trained for one side (ar, cmlm): the other side's rows left out
    untrained_rows = []
    for setting in settings(compat, config.has_nar):
        if setting.translator_key not in translators:
            continue
        if trained is not None and not needed_sides(setting.mode, setting.ar_rescore) <= trained:
            untrained_rows.append(setting.name)
            continue
        translator = translators[setting.translator_key]
        batch1_seconds, batch_seconds, hypotheses = _time_setting(
            translator, setting, sources, sources[:batch1_sentences], repeats
        )
        batch1 = sources[:batch1_sentences]
        if setting == Setting.of("engine", "ar"):
            greedy_outputs = hypotheses
        if setting.decoder == "engine" and setting.mode == "ar" and setting.beam == 1:
            greedy_by_key[setting.translator_key] = hypotheses
        target_length = statistics.mean(len(tokenizer.encode(h)) + 2 for h in hypotheses)
        flops = flops_per_sentence(config, setting, source_length, target_length)
        batch_rate = len(sources) / batch_seconds
        rows.append(
            {
                "setting": setting.name,
                **dataclasses.asdict(setting.options),
                "batch1_ms_per_sentence": 1e3 * batch1_seconds / len(batch1),
                "batch1_sentences_per_second": len(batch1) / batch1_seconds,
                "batch_ms_per_sentence": 1e3 / batch_rate,
                "batch_sentences_per_second": batch_rate,
                "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
                "gflop_per_sentence": flops / 1e9,
                "achieved_gflops": flops * batch_rate / 1e9,
                **(
                    speculative_figures(translator, setting, batch1, hypotheses, greedy_by_key)
                    if setting.mode == "spec"
                    else {}
                ),
            }
        )
    if "ctranslate2" in compare:
        rows += ctranslate2_rows(
            config,
            [len(tokenizer.encode(s)) for s in sources],
            [len(tokenizer.encode(h)) + 1 for h in greedy_outputs],  # + eos, as CTranslate2 counts
            batch1_sentences,
            max_batch_tokens,
            repeats,
        )
    by_name = {row["setting"]: row for row in rows}

    def ratio(faster: str, slower: str, key: str) -> float | None:
        if faster not in by_name or slower not in by_name:
            return None  # a row this device does not run
        return by_name[slower][key] / by_name[faster][key]

    ratios = {}
    for key, label in (("batch1_ms_per_sentence", "batch 1"), ("batch_ms_per_sentence", "large batch")):
        for prefix in ("engine", "engine bf16", "engine int8"):
            ratios[f"{prefix} AR greedy vs {prefix} speculative, {label}"] = ratio(
                f"{prefix} speculative", f"{prefix} AR greedy", key
            )
        ratios[f"engine NAR T=4 vs engine AR greedy, {label}"] = ratio("engine NAR T=4 lb=3", "engine AR greedy", key)
        ratios[f"engine NAR T=10 vs engine AR greedy, {label}"] = ratio("engine NAR T=10 lb=3", "engine AR greedy", key)
        ratios[f"engine AR greedy vs reference AR greedy, {label}"] = ratio(
            "engine AR greedy", "reference AR greedy", key
        )
        for t in NAR_ITERATIONS:
            ratios[f"engine NAR vs reference NAR T={t}, {label}"] = ratio(
                f"engine NAR T={t} lb=3", f"reference NAR T={t} lb=3", key
            )
        for precision in ("bf16", "int8"):
            ratios[f"engine {precision} vs engine fp32 NAR T=4, {label}"] = ratio(
                f"engine {precision} NAR T=4 lb=3", "engine NAR T=4 lb=3", key
            )
            ratios[f"engine {precision} vs engine fp32 AR greedy, {label}"] = ratio(
                f"engine {precision} AR greedy", "engine AR greedy", key
            )
        for ct2 in ("float32", "int8"):
            theirs = f"CTranslate2 AR greedy {ct2}"
            for ours in ("engine AR greedy", "engine NAR T=4 lb=3", "engine bf16 AR greedy", "engine bf16 NAR T=4 lb=3",
                         "engine int8 AR greedy", "engine int8 NAR T=4 lb=3"):  # fmt: skip
                ratios[f"{ours} vs {theirs}, {label}"] = ratio(ours, theirs, key)
    return {
        "rows": rows,
        "ratios": {name: value for name, value in ratios.items() if value is not None},
        "device": device if device == "cpu" else torch.cuda.get_device_name(torch.device(device)),
        "matmul_peak_gflops": peak,
        "sentences": len(sources),
        "batch1_sentences": min(batch1_sentences, len(sources)),
        "max_batch_tokens": max_batch_tokens,
        "threads": torch.get_num_threads(),
        "cpu": cpu_description(),
        "native_isa": cpu_isa(),
        "compat": compat,
        # the NAR rows' candidate ranking (the model's own defaults)
        "nar_ranking": (
            dataclasses.asdict(DecodeOptions(mode="nar").resolve(config).ranking)
            if compat == "janus" and (trained is None or "nar" in trained)
            else None
        ),
        # rows of a side the model's training objectives never trained (they would time noise)
        "untrained_rows": untrained_rows,
    }


def speculative_acceptance(
    translator: Translator, sources: list[list[int]], options: DecodeOptions
) -> SpeculativeStats:
    """What speculative decoding with ``options`` does to each of ``sources`` (ids as the model
    reads them, ``Translator.wrap_sources``; empty ones skipped) decoded alone, at batch 1:
    rounds, tokens and drafted tokens kept, summed."""
    stats = SpeculativeStats()
    resolved = translator.resolve_options(options)
    for ids in sources:
        if ids:
            src, src_lengths = torch.tensor([ids]), torch.tensor([len(ids)])
            decode_batch(translator.model, src, src_lengths, resolved, translator.choice, stats)
    return stats


def speculative_figures(
    translator: Translator,
    setting: Setting,
    batch1: list[str],
    hypotheses: list[str],
    greedy_by_key: dict[str, list[str]],
) -> dict:
    """A speculative row's acceptance (at batch 1: mean tokens gained per verify pass, passes per
    sentence) and how many of its large-batch translations equal engine AR greedy's at the same
    precision (None where that row has not run)."""
    stats = speculative_acceptance(translator, translator.encode_sources(batch1), setting.options)
    greedy = greedy_by_key.get(setting.translator_key)
    return {
        "tokens_per_verify_pass": stats.tokens_per_round,
        "verify_passes_per_sentence": stats.rounds_per_sentence,
        "same_as_ar_greedy": None if greedy is None else sum(a == b for a, b in zip(hypotheses, greedy)),
    }


def ctranslate2_rows(
    config: JanusConfig,
    source_lengths: list[int],
    output_lengths: list[int],
    batch1_sentences: int,
    max_batch_tokens: int,
    repeats: int,
) -> list[dict]:
    """CTranslate2 AR greedy (float32 and int8) on a same-shape random model, as table rows."""
    timings = time_ctranslate2(
        config, source_lengths, output_lengths, batch1_sentences, max_batch_tokens, torch.get_num_threads(), repeats
    )
    batch1 = min(batch1_sentences, len(source_lengths))
    rows = []
    for compute_type, timing in timings.items():
        rows.append(
            {
                "setting": f"CTranslate2 AR greedy {compute_type}",
                "mode": "ar",
                "iterations": None,
                "length_beam": None,
                "beam": 1,
                "decoder": "ctranslate2",
                "precision": compute_type,
                "batch1_ms_per_sentence": 1e3 * timing["batch1_seconds"] / batch1,
                "batch1_sentences_per_second": batch1 / timing["batch1_seconds"],
                **large_batch_figures(timing, output_lengths),
                "bleu": None,  # random weights: only the time means something
                "gflop_per_sentence": None,
                "achieved_gflops": None,
            }
        )
    return rows


def format_report(report: dict) -> str:
    """The table, the ratios and the peak, as markdown."""
    lines = [
        f"{report['sentences']} test sentences (batch 1: the first {report['batch1_sentences']}), "
        f"large batch = {report['max_batch_tokens']} tokens, {report['threads']} threads, "
        f"fp32 matmul peak measured: {report['matmul_peak_gflops']:.0f} GFLOP/s",
        f"CPU: {report.get('cpu', 'unknown')}; native matrix products: {report.get('native_isa', 'none')}",
        f"NAR candidate ranking (the model's defaults): {report.get('nar_ranking')}",
        *(
            [f"left out, a side this model's training never trained: {', '.join(report['untrained_rows'])}"]
            if report.get("untrained_rows")
            else []
        ),
        "",
        "| setting | batch 1 ms/sent | batch 1 sent/s | large batch ms/sent | large batch sent/s | BLEU "
        "| GFLOP/sent | achieved GFLOP/s | of peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        if row["bleu"] is None:  # another tool on random weights: time only
            quality = "n/a | n/a | n/a | n/a"
        else:
            quality = (
                f"{row['bleu']:.2f} | {row['gflop_per_sentence']:.3f} | {row['achieved_gflops']:.1f} "
                f"| {100 * row['achieved_gflops'] / report['matmul_peak_gflops']:.0f}%"
            )
        lines.append(
            f"| {row['setting']} | {row['batch1_ms_per_sentence']:.1f} | {row['batch1_sentences_per_second']:.1f} "
            f"| {row['batch_ms_per_sentence']:.2f} | {row['batch_sentences_per_second']:.1f} | {quality} |"
        )
    spec_rows = [row for row in report["rows"] if row["mode"] == "spec"]
    if spec_rows:
        lines += ["", "| speculative setting | tokens per verify pass (batch 1) | verify passes per sentence "
                  "| same output as AR greedy |", "|---|---:|---:|---:|"]  # fmt: skip
        for row in spec_rows:
            same = "n/a" if row["same_as_ar_greedy"] is None else f"{row['same_as_ar_greedy']}/{report['sentences']}"
            lines.append(
                f"| {row['setting']} | {row['tokens_per_verify_pass']:.2f} | {row['verify_passes_per_sentence']:.2f} "
                f"| {same} |"
            )
    for row in report["rows"]:
        if row.get("ctranslate2_extra_work", 1.0) > 1.0:
            lines.append(
                f"{row['setting']}: its large batches (one forced length per batch) decoded "
                f"{row['ctranslate2_extra_work']:.2f}x the engine's tokens; its time is scaled to the engine's work"
            )
    lines += ["", "| speed-up (time ratio) | x |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in report["ratios"].items()]
    return "\n".join(lines)


def write_plot(report: dict, path: str) -> bool:
    """BLEU against large-batch ms/sentence for every setting, written to ``path`` (replaced whole,
    in the file type its extension names: png, pdf, svg); False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(8, 5))
    styles = {
        "reference": ("tab:gray", "reference"),
        "engine": ("tab:blue", "engine"),
        "bf16": ("tab:green", "engine bf16"),
        "int8": ("tab:orange", "engine int8"),
    }
    seen = set()
    for row in report["rows"]:
        if row["decoder"] == "ctranslate2":  # no BLEU (random weights): its time as a vertical line
            style = "--" if "int8" in row["setting"] else ":"
            axis.axvline(row["batch_ms_per_sentence"], color="tab:red", linestyle=style, label=row["setting"])
            continue
        key = row.get("precision") if row.get("precision") in ("bf16", "int8") else row["decoder"]
        color, label = styles[key]
        marker = {"nar": "o", "ar": "s", "spec": "^"}[row["mode"]]
        legend = f"{label} {row['mode'].upper()}"
        axis.scatter(
            row["batch_ms_per_sentence"], row["bleu"], marker=marker, color=color,
            label=None if legend in seen else legend,
        )  # fmt: skip
        seen.add(legend)
        if key == "engine":  # one label per setting, next to the fp32 engine point
            short = row["setting"].removeprefix("engine ").replace(" lb=3", "")
            axis.annotate(short, (row["batch_ms_per_sentence"], row["bleu"]), xytext=(4, 4),
                          textcoords="offset points", fontsize=8)  # fmt: skip
    axis.legend(fontsize=8, loc="lower right")
    axis.set_xscale("log")
    axis.set_xlabel("ms per sentence (large batch, log scale)")
    axis.set_ylabel("BLEU (test_2016_flickr)")
    axis.set_title("BLEU vs decoding time (NAR: length beam 3)")
    figure.tight_layout()
    image = io.BytesIO()
    try:
        figure.savefig(image, dpi=120, format=os.path.splitext(path)[1].lstrip(".").lower() or "png")
    finally:
        plt.close(figure)
    atomic_write(path, image.getvalue())
    return True


def format_bench_report(report: dict, as_json: bool) -> str:
    """``janus-fast bench``'s output for a ``run_bench`` report: the table, or JSON."""
    return json.dumps(report, indent=2) if as_json else format_report(report)
