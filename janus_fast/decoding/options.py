"""The decoding options, declared once: ``DecodeOptions`` (and the speculative mode's
``SpeculativeOptions``), checked and resolved in one place (``DecodeOptions.resolve``).

``generate``, ``Translator.translate`` / ``translate_ids``, the command line's decoding flags (built
from the fields' metadata: help text, choices, aliases) and the bench's settings all take these.
Options left None are resolved per compat ("janus": this project's semantics; "fairseq":
fairseq-generate's) and per model (its length bonus).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

from janus_fast.arguments import check_int, check_real, named, option, setting

if TYPE_CHECKING:
    from janus_fast.model import JanusConfig

MODES = ("ar", "nar", "spec")  # autoregressive, mask-predict, speculative (NAR drafts, AR verifies)
COMPAT_MODES = ("janus", "fairseq")
DECODERS = ("engine", "reference")
PRECISIONS = ("fp32", "bf16", "int8")
MAX_BEAM = 128  # AR beam sizes above this can only be a mistake (rows = sentences x beam)
MAX_DRAFT_ITERATIONS = 128  # mask-predict iterations per speculative draft, as many as --iterations allows
# Each compat's defaults for the options left None: this project's, and fairseq-generate 0.12.2's
# (its GenerationConfig: --iter-decode-max-iter 10, --iter-decode-with-beam 1, --beam 5, --max-len-a 0
# --max-len-b 200).
COMPAT_DEFAULTS = {
    "janus": {"iterations": 10, "length_beam": 3, "beam": 1, "max_len_a": 1.2, "max_len_b": 10},
    "fairseq": {"iterations": 10, "length_beam": 1, "beam": 5, "max_len_a": 0.0, "max_len_b": 200},
}
# the counts each mode uses (the others must keep their defaults)
USED_COUNTS = {
    "ar": ("beam", "max_len_a", "max_len_b"),
    "nar": ("iterations", "length_beam"),
    "spec": ("max_len_a", "max_len_b"),
}
# AR length limits (max_len_a, max_len_b): this project's default, and fairseq-generate's
JANUS_MAX_LEN = (COMPAT_DEFAULTS["janus"]["max_len_a"], COMPAT_DEFAULTS["janus"]["max_len_b"])
FAIRSEQ_MAX_LEN = (COMPAT_DEFAULTS["fairseq"]["max_len_a"], COMPAT_DEFAULTS["fairseq"]["max_len_b"])


# the most positions a draft or a verification may name (decoding caps both at the sentence's length
# limit, which no model's max_target_positions exceeds here); also the largest relaxed top k
MAX_WINDOW = 65536
# mode "spec" speculates in batches of at most this many sentences (``SpeculativeOptions``): its
# rounds do 4-5x AR greedy's row-work per token, which pays only where an AR step costs far more
# than its rows (batch 1 on a GPU: launches and latency); larger batches run AR greedy's steps
SPECULATE_UP_TO = 8


@dataclass(frozen=True)
class SpeculativeOptions:
    """How speculative decoding (mode "spec") drafts and verifies."""

    draft_iterations: int = option(1, "mask-predict iterations per draft")
    min_draft: int = option(4, "positions a draft covers at least")
    max_verify: int = option(8, "drafted tokens verified per round at most")
    relaxed_top_k: int = option(
        0,
        "also keep a drafted token among AR's top k within --relaxed-margin of its best (0: exact, AR greedy's output)",
    )
    relaxed_margin: float = option(1.0, "log-probability margin of relaxed verification")
    speculate_up_to: int = option(
        SPECULATE_UP_TO,
        "speculate in batches of at most this many sentences; a larger batch runs AR greedy's steps, the "
        "same output (its AR steps are already many-row products, and speculation only adds rows to them); "
        "0: speculate in every batch. Exact verification only: relaxed verification always speculates",
    )

    def __post_init__(self) -> None:
        ranges = {
            "draft_iterations": (1, MAX_DRAFT_ITERATIONS),
            "min_draft": (1, MAX_WINDOW),
            "max_verify": (1, MAX_WINDOW),
            "relaxed_top_k": (0, MAX_WINDOW),
            "speculate_up_to": (0, None),
        }
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{named(name)} must be an int, got {value!r}")
            if value < low or (high is not None and value > high):
                bounds = f"[{low}, {high}]" if high is not None else f"[{low}, inf]"
                raise ValueError(f"{named(name)} must be in {bounds}, got {value}")
            object.__setattr__(self, name, int(value))
        margin = self.relaxed_margin
        if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not math.isfinite(margin) or margin < 0:
            raise ValueError(f"{named('relaxed_margin')} must be a finite number >= 0, got {margin!r}")
        if self.relaxed_top_k == 0 and margin != SpeculativeOptions.relaxed_margin:
            top_k = named("relaxed_top_k")
            raise ValueError(
                f"{named('relaxed_margin')} {margin} applies to the relaxed verification of {setting('mode', 'spec')} "
                f"only: give {top_k} > 0 with it ({top_k} 0 is exact verification, AR greedy's output)"
            )


@dataclass(frozen=True)
class CandidateRanking:
    """How mask-predict picks each sentence's length candidate: by its mean NAR log-probability, or
    with ``ar_rescore`` by the same model's AR score of it, plus ``length_bonus`` per target token."""

    ar_rescore: bool = False
    length_bonus: float = 0.0


PLAIN_RANKING = CandidateRanking()  # mean NAR log-probability, no bonus


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode. Every field has a command-line flag of the same name (``--length-beam``)."""

    mode: str = option(
        "ar",
        "ar: autoregressive (with --beam 1 greedy; on the CPU better than mask-predict on the shipped "
        "model, and faster than it at 4 or more iterations), nar: mask-predict, spec: speculative (NAR "
        "drafts, AR verifies: AR greedy's output)",
        choices=MODES,
    )
    iterations: int | None = option(
        None,
        "mask-predict iterations (NAR; default 10); with --compat fairseq, fairseq's "
        "--iter-decode-max-iter (iterations + 1 passes; default 10)",
        aliases=("--iter-decode-max-iter",),
    )
    length_beam: int | None = option(
        None,
        "length candidates (NAR; default 3); with --compat fairseq, fairseq's --iter-decode-with-beam (default 1)",
        aliases=("--iter-decode-with-beam",),
    )
    beam: int | None = option(
        None, "beam size (AR; 1 = greedy; default 1); with --compat fairseq, fairseq's --beam (default 5)"
    )
    max_len_a: float | None = option(
        None,
        "AR: at most max_len_a x source length + max_len_b target tokens, eos included (default 1.2 per "
        "sentence; with --compat fairseq, fairseq's 0 on the padded source width, eos not included)",
    )
    max_len_b: int | None = option(None, "see --max-len-a (default 10; with --compat fairseq, 200)")
    decoder: str = option(
        "engine", "the fast engine or the plain PyTorch reference decoder (same outputs)", choices=DECODERS
    )
    precision: str = option(
        "fp32",
        "decode precision: fp32 (the reference's output), bf16 (the CPU engine's native passes "
        "store bf16 weights, bf16 products where the CPU has AVX-512 BF16) or int8 (int8 weights, int8 "
        "products where the CPU has AVX-512 VNNI; outputs may differ slightly)",
        choices=PRECISIONS,
    )
    compat: str = option(
        "janus",
        "decoding semantics: this project's or fairseq-generate's mask-predict / AR beam search "
        "(docs/fairseq.md); options left unset take fairseq-generate's defaults",
        choices=COMPAT_MODES,
    )
    force_max_iter: bool = option(
        False,
        "with --compat fairseq: run every pass (fairseq's --iter-decode-force-max-iter; default: adaptive stop)",
        aliases=("--iter-decode-force-max-iter",),
    )
    collapse_repeats: bool | None = option(
        None,
        "NAR: keep each run of a repeated token once, the usual NAR post-processing (default: on "
        "for NAR with --compat janus; --keep-repeats: off)",
        negative_aliases=("--keep-repeats",),
    )
    ar_rescore: bool = option(
        False, "NAR: pick each sentence's length candidate by the same model's AR score of it (one more decoder pass)"
    )
    length_bonus: float | None = option(
        None,
        "NAR: rank the length candidates by score + this x length (default: the model's own; "
        "the shipped model's was tuned on validation)",
    )
    speculative: SpeculativeOptions | None = option(
        None,
        "mode spec's options (None: the defaults)",
        cli_dataclass=SpeculativeOptions,
        cli_prefix="",
        title="speculative decoding (--mode spec)",
    )

    @property
    def ranking(self) -> CandidateRanking:
        """The NAR candidate ranking of (resolved) options."""
        return CandidateRanking(self.ar_rescore, self.length_bonus)

    def replace(self, **changes: object) -> DecodeOptions:
        """A copy with ``changes``; TypeError naming an option that does not exist."""
        names = {item.name for item in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown decoding option(s) {', '.join(unknown)}; expected some of {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def resolve(self, config: JanusConfig) -> DecodeOptions:
        """These options checked for a model of ``config``, every one left None resolved: TypeError /
        ValueError for a value of the wrong type, out of range, or an option that the mode, compat or
        model does not use (a non-default value only: a default is always fine)."""
        check_choice("mode", self.mode, MODES)
        check_choice("compat", self.compat, COMPAT_MODES)
        check_choice("decoder", self.decoder, DECODERS)
        check_choice("precision", self.precision, PRECISIONS)
        for name in ("force_max_iter", "ar_rescore"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{named(name)} must be true or false, got {getattr(self, name)!r}")
        mode, compat = self.mode, self.compat
        _check_model_kind(config, mode, compat, self.ar_rescore)
        defaults = COMPAT_DEFAULTS[compat]
        resolved = {
            name: defaults[name] if getattr(self, name) is None else getattr(self, name)
            for name in ("iterations", "length_beam", "beam", "max_len_a", "max_len_b")
        }
        for name, value in resolved.items():  # a count another mode uses, given a value of its own
            if isinstance(value, bool):
                raise TypeError(f"{named(name)} must be a number, got {value!r}")
            if name not in USED_COUNTS[mode] and value != defaults[name]:
                users = " or ".join(setting("mode", other) for other in MODES if name in USED_COUNTS[other])
                raise ValueError(
                    f"{setting(name, value)} does not apply to {setting('mode', mode)} (it uses "
                    f"{', '.join(map(named, USED_COUNTS[mode]))}); {named(name)} is for {users}"
                )
        defaulted = {name for name in resolved if getattr(self, name) is None}
        _check_counts(config, mode, compat, resolved, defaulted)
        nar_janus = mode == "nar" and compat == "janus"
        nar_fairseq = f"{setting('mode', 'nar')} with {setting('compat', 'fairseq')}"
        nar_janus_only = f"applies to {setting('mode', 'nar')} with {setting('compat', 'janus')} only"
        if self.force_max_iter and (compat != "fairseq" or mode != "nar"):
            raise ValueError(f"{named('force_max_iter')} applies to {nar_fairseq} only (janus runs every iteration)")
        if self.ar_rescore and not nar_janus:
            raise ValueError(f"{named('ar_rescore')} {nar_janus_only}")
        collapse = self.collapse_repeats
        if collapse is not None and not isinstance(collapse, bool):
            raise TypeError(f"{named('collapse_repeats')} must be true, false or None, got {collapse!r}")
        if collapse and not nar_janus:  # (keeping repeats is what the other modes do: accepted)
            raise ValueError(f"{named('collapse_repeats')} {nar_janus_only}")
        bonus = self.length_bonus
        if bonus is not None:
            bonus = check_real(named("length_bonus"), bonus)
            if bonus and not nar_janus:
                raise ValueError(f"{named('length_bonus')} {nar_janus_only}")
        speculative = _check_speculative(self.speculative, mode, compat, self.decoder)
        # what the mode does not use stays None: resolved options given again with another mode then
        # resolve that mode's defaults (an AR call's "no bonus, repeats kept" is not a NAR choice)
        return dataclasses.replace(
            self,
            speculative=speculative,
            **{name: value if name in USED_COUNTS[mode] else None for name, value in resolved.items()},
            collapse_repeats=(collapse is None or collapse) if nar_janus else None,
            length_bonus=(float(bonus) if bonus is not None else config.length_bonus) if nar_janus else None,
        )


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {choices}")


def _check_counts(config: JanusConfig, mode: str, compat: str, values: dict, defaulted: set[str]) -> None:
    """The iteration, length beam and beam counts in range for the mode and compat, and the AR
    length limit's a (a number >= 0) and b (an integer >= 0); ``values`` get them as Python ints and
    floats (NumPy numbers accepted). A count in ``defaulted`` (left None by the caller) is capped to
    what the model allows instead of refused: a model of 8 target positions decodes NAR with 8
    iterations when none are asked for, not with an error about the default of 10."""
    positions, classes = config.max_target_positions, config.num_length_classes
    ranges = {"iterations": (1, positions), "length_beam": (1, classes), "beam": (1, MAX_BEAM)}
    if compat == "fairseq":
        if mode not in ("nar", "ar"):
            raise ValueError(
                f"{setting('compat', 'fairseq')} decodes with {setting('mode', 'nar')} or {setting('mode', 'ar')}, "
                f"not {setting('mode', mode)}"
            )
        ranges["iterations"] = (0, positions)  # fairseq's max iter: + 1 passes
        checked = ("beam",) if mode == "ar" else ("iterations", "length_beam")
    else:  # only the counts the mode uses: a model of 8 positions decodes AR with the default 10 iterations
        checked = {"ar": ("beam",), "nar": ("iterations", "length_beam"), "spec": ()}.get(mode, tuple(ranges))
    for name in checked:
        low, high = ranges[name]
        if name in defaulted:
            values[name] = min(values[name], high)
        values[name] = check_int(named(name), values[name], low, high)
    values["max_len_a"] = check_real(named("max_len_a"), values["max_len_a"], 0)
    values["max_len_b"] = check_int(named("max_len_b"), values["max_len_b"], 0)
    # janus counts eos in the limit (beam.max_ar_lengths), fairseq does not
    words_from = 2 if compat == "janus" else 1
    longest = values["max_len_a"] * config.max_source_positions + values["max_len_b"]  # the longest source's limit
    if longest < words_from:
        counted = ", which counts eos," if compat == "janus" else ""
        a, b = named("max_len_a"), named("max_len_b")
        raise ValueError(
            f"{a} {values['max_len_a']} and {b} {values['max_len_b']}: the AR length limit{counted} "
            f"allows no word for any source up to the model's {config.max_source_positions} positions; give "
            f"{b} >= {words_from} or a larger {a}"
        )


def needed_sides(mode: str, ar_rescore: bool = False) -> set[str]:
    """The sides ("ar", "nar") a decoding runs: its mode's, and the AR side for ``ar_rescore``."""
    return {"ar": {"ar"}, "nar": {"nar"}, "spec": {"ar", "nar"}}[mode] | ({"ar"} if ar_rescore else set())


def _check_model_kind(config: JanusConfig, mode: str, compat: str, ar_rescore: bool = False) -> None:
    """ValueError for a decoding the model cannot do: a plain transformer (a converted fairseq
    ``transformer``, ``ar_stream="content"``) has no NAR side and decodes as fairseq-generate does;
    a side that none of the model's recorded training objectives trained (``trained_sides``) is noise
    (``ar_rescore`` ranks NAR candidates with the AR side: it needs that side too)."""
    if mode == "spec" and (not config.has_nar or config.ar_stream != "query"):
        raise ValueError(
            f"{setting('mode', 'spec')} drafts with the NAR side and verifies with the AR query stream of a JANUS model"
        )
    if not config.has_nar:
        if mode == "nar":
            raise ValueError(
                f"this model is a plain transformer (AR only): it has no NAR side; use {setting('mode', 'ar')}"
            )
        if compat != "fairseq":
            raise ValueError(
                f"this model is a converted fairseq transformer: decode it with {setting('compat', 'fairseq')}"
            )
    trained = config.trained_sides
    needed = needed_sides(mode, ar_rescore)
    if trained is not None and not needed <= trained:
        objectives = ", ".join(config.extra["trained_objectives"])
        untrained = " and ".join(sorted(needed - trained)).upper()
        usable = " or ".join(setting("mode", m) for m in ("ar", "nar") if m in trained) or "no mode"
        by_rescore = ar_rescore and "ar" not in trained  # (the mode alone may need only a trained side)
        rescore, without = (
            (f" with {setting('ar_rescore', True)}", f" without {named('ar_rescore')}") if by_rescore else ("", "")
        )
        raise ValueError(
            f"this model was trained with objective {objectives} only: its {untrained} side was never trained, so "
            f"{setting('mode', mode)}{rescore} would decode noise; use {usable}{without}"
        )


def _check_speculative(options: object, mode: str, compat: str, decoder: str) -> SpeculativeOptions | None:
    """Mode "spec"'s options (None given: the defaults; other modes: None). TypeError / ValueError
    for options that are not ``SpeculativeOptions``, given with another mode, mode "spec" with
    compat "fairseq", or relaxed verification with the reference decoder (whose mode "spec" is AR
    greedy itself)."""
    if options is not None and not isinstance(options, SpeculativeOptions):
        raise TypeError(f"speculative must be a SpeculativeOptions or None, got {type(options).__name__}")
    if mode != "spec":
        if options is not None:
            given = [
                setting(item.name, getattr(options, item.name))
                for item in dataclasses.fields(SpeculativeOptions)
                if getattr(options, item.name) != item.default
            ]
            what, verb = (
                (", ".join(given), "applies" if len(given) == 1 else "apply")
                if given
                else ("speculative options", "apply")
            )
            raise ValueError(f"{what} {verb} to {setting('mode', 'spec')} only, not to {setting('mode', mode)}")
        return None
    if compat != "janus":
        raise ValueError(f"{setting('mode', 'spec')} runs with {setting('compat', 'janus')} only")
    options = options if options is not None else SpeculativeOptions()
    if options.relaxed_top_k and decoder != "engine":
        raise ValueError(f"relaxed verification ({named('relaxed_top_k')} > 0) needs {setting('decoder', 'engine')}")
    return options
