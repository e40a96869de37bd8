"""``generate``: one entry point on tensors, dispatching to the fast engine (``janus_fast.decoding.engine``)
or the reference decoders (``janus_fast.decoding.reference``), with the checks of its arguments;
``compat="fairseq"`` runs fairseq-generate's mask-predict or AR beam search instead
(``janus_fast.decoding.fairseq``).
"""

from __future__ import annotations

import math

import torch

from janus_fast.arguments import check_int
from janus_fast.decoding import engine, fairseq, reference
from janus_fast.decoding.search import FAIRSEQ_MAX_LEN, JANUS_MAX_LEN, Hypotheses
from janus_fast.decoding.search import collapse_repeats as collapse_repeated_tokens
from janus_fast.decoding.speculative import SpeculativeOptions
from janus_fast.model import JanusModel

MAX_BEAM = 128  # AR beam sizes above this can only be a mistake (rows = sentences x beam)
COMPAT_MODES = ("janus", "fairseq")
MODES = ("nar", "ar", "spec")  # mask-predict, autoregressive, speculative (NAR drafts, AR verifies)


def check_compat(
    model: JanusModel, compat: str, mode: str, iterations: int, length_beam: int, force: bool, beam: int = 1
) -> None:
    """TypeError / ValueError for a compatibility mode and options it cannot run. With "fairseq",
    ``iterations`` is fairseq's ``--iter-decode-max-iter`` (>= 0; iterations + 1 passes); AR runs
    fairseq-generate's beam search (``beam`` = its ``--beam``)."""
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat {compat!r}; expected one of {COMPAT_MODES}")
    if not isinstance(force, bool):
        raise TypeError(f"force_max_iter must be true or false, got {force!r}")
    if compat == "janus":
        if force:
            raise ValueError("force_max_iter applies to compat='fairseq' only (janus runs every iteration)")
        return
    if mode not in ("nar", "ar"):
        raise ValueError(f"mode must be 'nar' or 'ar', got {mode!r}")
    if mode == "ar":
        check_int("beam", beam, 1, MAX_BEAM)
        return
    check_int("iterations", iterations, 0, model.config.max_target_positions)
    check_int("length_beam", length_beam, 1, model.config.num_length_classes)


def check_model_kind(model: JanusModel, mode: str, compat: str) -> None:
    """ValueError for a decoding the model cannot do: a plain transformer (a converted fairseq
    ``transformer``, ``ar_stream="content"``) has no NAR side and decodes as fairseq-generate does."""
    if mode == "spec" and (not model.config.has_nar or model.config.ar_stream != "query"):
        raise ValueError("mode='spec' drafts with the NAR side and verifies with the AR query stream of a JANUS model")
    if model.config.has_nar:
        return
    if mode == "nar":
        raise ValueError("this model is a plain transformer (AR only): it has no NAR side; use mode='ar'")
    if compat != "fairseq":
        raise ValueError("this model is a converted fairseq transformer: decode it with compat='fairseq'")


def check_decoding_options(model: JanusModel, mode: str, iterations: int, length_beam: int, beam: int) -> None:
    """TypeError / ValueError for options no decoding can use: mode in ``MODES``, iterations in [1,
    max target positions], length_beam in [1, length classes] (capped later by the possible
    lengths), beam in [1, MAX_BEAM]."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    config = model.config
    check_int("iterations", iterations, 1, config.max_target_positions)
    check_int("length_beam", length_beam, 1, config.num_length_classes)
    check_int("beam", beam, 1, MAX_BEAM)


def check_nar_janus_only(name: str, used: object, mode: str, compat: str) -> None:
    """ValueError when an option set to a truthy ``used`` goes with anything but mode "nar" and
    compat "janus" (the NAR post-processing and ranking options of this project's decoding)."""
    if used and (mode != "nar" or compat != "janus"):
        raise ValueError(f"{name} applies to mode='nar' with compat='janus' only")


def resolve_speculative(
    mode: str, compat: str, decoder: str, speculative: SpeculativeOptions | None
) -> SpeculativeOptions | None:
    """The speculative decoding options of mode "spec" (None: the defaults); TypeError / ValueError
    for options given with another mode or compat, and for relaxed verification with the reference
    decoder (whose mode "spec" is AR greedy itself: exact verification gives exactly its output)."""
    if speculative is not None and not isinstance(speculative, SpeculativeOptions):
        raise TypeError(f"speculative must be a SpeculativeOptions or None, got {type(speculative).__name__}")
    if mode != "spec":
        if speculative is not None:
            raise ValueError("speculative options apply to mode='spec' only")
        return None
    if compat != "janus":
        raise ValueError("mode='spec' runs with compat='janus' only")
    options = speculative if speculative is not None else SpeculativeOptions()
    if options.relaxed_top_k and decoder != "engine":
        raise ValueError("relaxed verification (relaxed_top_k > 0) needs decoder='engine'")
    return options


def resolve_collapse_repeats(mode: str, compat: str, collapse_repeats: bool | None) -> bool:
    """Whether NAR outputs get their repeated neighbours collapsed (``search.collapse_repeats``):
    None = the default, on for mode "nar" with compat "janus", off otherwise (AR outputs and
    fairseq-generate's are kept as they are); True where it does not apply is a ValueError."""
    if collapse_repeats is None:
        return mode == "nar" and compat == "janus"
    if not isinstance(collapse_repeats, bool):
        raise TypeError(f"collapse_repeats must be true, false or None, got {collapse_repeats!r}")
    check_nar_janus_only("collapse_repeats", collapse_repeats, mode, compat)
    return collapse_repeats


def check_ar_rescore(mode: str, compat: str, ar_rescore: bool) -> None:
    """TypeError / ValueError unless ``ar_rescore`` is a bool, and true only for mode "nar" with
    compat "janus"."""
    if not isinstance(ar_rescore, bool):
        raise TypeError(f"ar_rescore must be true or false, got {ar_rescore!r}")
    check_nar_janus_only("ar_rescore", ar_rescore, mode, compat)


def resolve_length_bonus(model: JanusModel, mode: str, compat: str, length_bonus: float | None) -> float:
    """The per-token bonus NAR adds to each length candidate's ranking: None = the model's own
    default (``JanusConfig.length_bonus``) for mode "nar" with compat "janus", else 0.0; a
    non-zero number where it does not apply (AR, fairseq's ranking) is a ValueError, a non-finite
    one too."""
    if length_bonus is None:
        return model.config.length_bonus if mode == "nar" and compat == "janus" else 0.0
    if isinstance(length_bonus, bool) or not isinstance(length_bonus, (int, float)):
        raise TypeError(f"length_bonus must be a number or None, got {length_bonus!r}")
    if not math.isfinite(length_bonus):
        raise ValueError(f"length_bonus must be a finite number, got {length_bonus!r}")
    check_nar_janus_only("length_bonus", length_bonus, mode, compat)
    return float(length_bonus)


DEFAULT_MAX_LEN = {"janus": JANUS_MAX_LEN, "fairseq": FAIRSEQ_MAX_LEN}


def resolve_max_len(compat: str, max_len_a: float | None, max_len_b: int | None) -> tuple[float, int]:
    """The AR length limit's ``(a, b)``: each unset one from ``compat``'s default; ValueError /
    TypeError for a negative or non-numeric a, or a b that is not an integer >= 0."""
    default_a, default_b = DEFAULT_MAX_LEN[compat]
    a = default_a if max_len_a is None else max_len_a
    b = default_b if max_len_b is None else max_len_b
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
        raise ValueError(f"max_len_a must be a finite number >= 0, got {max_len_a!r}")
    return float(a), check_int("max_len_b", b, 0)


# Each compat's defaults for the options a caller leaves None: this project's, and fairseq-generate
# 0.12.2's (its GenerationConfig: --iter-decode-max-iter 10, --iter-decode-with-beam 1, --beam 5).
DEFAULT_DECODING = {
    "janus": {"iterations": 10, "length_beam": 3, "beam": 1},
    "fairseq": {"iterations": 10, "length_beam": 1, "beam": 5},
}


def resolve_compat_defaults(
    compat: str, iterations: int | None, length_beam: int | None, beam: int | None
) -> tuple[int, int, int]:
    """``(iterations, length_beam, beam)``: each one left None from ``compat``'s default
    (``DEFAULT_DECODING``), the others as given (checked later). "janus": 10 iterations, length
    beam 3, beam 1; "fairseq": fairseq-generate's ``--iter-decode-max-iter 10`` (11 passes),
    ``--iter-decode-with-beam 1`` and ``--beam 5``. ValueError for an unknown compat."""
    if not isinstance(compat, str) or compat not in DEFAULT_DECODING:
        raise ValueError(f"unknown compat {compat!r}; expected one of {COMPAT_MODES}")
    defaults = DEFAULT_DECODING[compat]
    return (
        defaults["iterations"] if iterations is None else iterations,
        defaults["length_beam"] if length_beam is None else length_beam,
        defaults["beam"] if beam is None else beam,
    )


def generate(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    mode: str = "nar",
    iterations: int | None = None,
    length_beam: int | None = None,
    beam: int | None = None,
    max_len_a: float | None = None,
    max_len_b: int | None = None,
    decoder: str = "engine",
    return_scores: bool = False,
    decoder_weights: str = "fp32",
    compat: str = "janus",
    force_max_iter: bool = False,
    collapse_repeats: bool | None = None,
    ar_rescore: bool = False,
    length_bonus: float | None = None,
    speculative: SpeculativeOptions | None = None,
) -> list[list[int]] | Hypotheses:
    """Translate a padded batch of source ids; returns target ids per sentence (no bos/eos/pad),
    or with ``return_scores`` the ``Hypotheses`` (ids and each sentence's score: mean token
    log-probability for NAR, length-normalised log-probability for AR and speculative).

    src_tokens (B, S) int64 right-padded, src_lengths (B,) int64 >= 1; mode "nar" (mask-predict,
    ``iterations`` x ``length_beam``), "ar" (``beam`` 1 = greedy) or "spec" (speculative: the NAR
    side drafts, the AR side verifies, ``janus_fast.decoding.speculative``; AR greedy's tokens and scores at
    the same precision, in fewer sequential passes; ``speculative`` sets its options, and its
    relaxed verification trades that exactness for speed). decoder "engine" (the fast
    path, ``janus_fast.decoding.engine``) or "reference" (``janus_fast.decoding.reference``); both give the
    same outputs. With compat "fairseq", "engine" runs the native CPU passes where they can run.
    ``decoder_weights`` ("fp32", "bf16", "int8"): the engine's native CPU passes store their weights
    in that type (``janus_fast.native.decoder``); anything but fp32 changes outputs slightly.

    compat "janus" (default: this project's semantics) or "fairseq": fairseq-generate's
    mask-predict (``janus_fast.decoding.fairseq``; ``iterations`` is its ``--iter-decode-max-iter``,
    so iterations + 1 passes; ``force_max_iter`` its ``--iter-decode-force-max-iter``) or, for
    mode "ar", its beam search (``--beam``); the tokens then keep ``<unk>`` and the score is
    fairseq's (natural log).

    ``iterations``, ``length_beam``, ``beam`` left None take the compat's defaults
    (``resolve_compat_defaults``): 10, 3 and 1 for "janus"; fairseq-generate's 10, 1 and 5 for
    "fairseq" (``--iter-decode-max-iter``, ``--iter-decode-with-beam``, ``--beam``).

    ``max_len_a``, ``max_len_b`` (mode "ar"): at most ``max_len_a * source length + max_len_b``
    target tokens. Unset, each compat's own default: 1.2 and 10 for "janus" (per sentence, its
    source length), fairseq-generate's 0 and 200 for "fairseq" (its padded source width, capped at
    the model's positions). NAR predicts its lengths and ignores them.

    ``collapse_repeats`` (default: on for NAR with compat "janus"): each run of a repeated token
    in the chosen NAR candidate is kept once (``search.collapse_repeats``); the score stays the
    candidate's.

    ``ar_rescore`` (NAR, compat "janus"; default off): pick each sentence's length candidate by the
    same model's mean AR log-probability of it (one teacher-forced pass of both streams,
    ``search.ar_candidate_scores``) instead of its mean NAR log-probability; the score is then the
    AR one.

    ``length_bonus`` (NAR, compat "janus"; default: the model's ``config.length_bonus``, 0.0 unless
    its checkpoint sets one): each length candidate is ranked by its score plus this much per
    target token (NAR outputs tend to come out short; the shipped model's value was tuned on
    validation). The returned score stays the candidate's own.

    ``model`` must be in eval mode (a ValueError otherwise: in training mode dropout would change
    the tokens on every call); ``Translator`` puts its model there itself.
    """
    if model.training:
        raise ValueError(
            "generate() needs the model in eval mode, but it is in training mode (dropout would change "
            "the output on every call): call model.eval() first"
        )
    _check_source(model, src_tokens, src_lengths)
    iterations, length_beam, beam = resolve_compat_defaults(compat, iterations, length_beam, beam)
    check_compat(model, compat, mode, iterations, length_beam, force_max_iter, beam)
    check_model_kind(model, mode, compat)
    collapse = resolve_collapse_repeats(mode, compat, collapse_repeats)
    check_ar_rescore(mode, compat, ar_rescore)
    bonus = resolve_length_bonus(model, mode, compat, length_bonus)
    spec_options = resolve_speculative(mode, compat, decoder, speculative)
    if compat == "janus":
        check_decoding_options(model, mode, iterations, length_beam, beam)
    if decoder not in ("engine", "reference"):
        raise ValueError(f"unknown decoder {decoder!r}; expected 'engine' or 'reference'")
    if decoder_weights not in ("fp32", "bf16", "int8"):
        raise ValueError(f"decoder_weights must be 'fp32', 'bf16' or 'int8', got {decoder_weights!r}")
    if decoder_weights != "fp32" and decoder != "engine":
        raise ValueError("decoder_weights other than 'fp32' need decoder='engine'")
    max_len_a, max_len_b = resolve_max_len(compat, max_len_a, max_len_b)
    if len(src_lengths) == 0:
        hypotheses = Hypotheses([], [])
    elif compat == "fairseq" and mode == "ar":
        found = fairseq.ar_beam_search(
            model, src_tokens, src_lengths, beam, max_len_a, max_len_b, decoder == "engine", decoder_weights
        )
        hypotheses = _fairseq_hypotheses(model, found)
    elif compat == "fairseq":
        hypotheses = _fairseq_generate(
            model,
            src_tokens,
            src_lengths,
            iterations,
            length_beam,
            force_max_iter,
            native=decoder == "engine",
            decoder_weights=decoder_weights,
        )
    elif mode == "spec" and decoder == "engine":
        hypotheses = engine.speculative(
            model, src_tokens, src_lengths, max_len_a, max_len_b, decoder_weights, spec_options
        )
    elif mode == "spec":  # exact speculative decoding gives AR greedy's output: its reference is AR greedy
        hypotheses = reference.ar_search(model, src_tokens, src_lengths, 1, max_len_a, max_len_b)
    elif decoder == "engine":
        if mode == "nar":
            hypotheses = engine.mask_predict(
                model, src_tokens, src_lengths, iterations, length_beam, decoder_weights, ar_rescore, bonus
            )
        else:
            hypotheses = engine.ar_search(model, src_tokens, src_lengths, beam, max_len_a, max_len_b, decoder_weights)
    elif mode == "nar":
        hypotheses = reference.mask_predict(model, src_tokens, src_lengths, iterations, length_beam, ar_rescore, bonus)
    else:
        hypotheses = reference.ar_search(model, src_tokens, src_lengths, beam, max_len_a, max_len_b)
    if collapse:
        hypotheses = Hypotheses([collapse_repeated_tokens(tokens) for tokens in hypotheses.tokens], hypotheses.scores)
    return hypotheses if return_scores else hypotheses.tokens


def _fairseq_generate(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    max_iter: int,
    length_beam: int,
    force: bool,
    native: bool,
    decoder_weights: str = "fp32",
) -> Hypotheses:
    """fairseq-generate's hypotheses as ``Hypotheses``: tokens without bos/eos/pad, fairseq's score;
    ``decoder_weights`` the native passes' weight type."""
    found = fairseq.mask_predict(model, src_tokens, src_lengths, max_iter, length_beam, force, native, decoder_weights)
    return _fairseq_hypotheses(model, found)


def _fairseq_hypotheses(model: JanusModel, found: list[fairseq.FairseqHypothesis]) -> Hypotheses:
    """fairseq's hypotheses as ``Hypotheses``: tokens without bos/eos/pad (``<unk>`` kept), its score."""
    drop = {model.config.bos_id, model.config.eos_id, model.config.pad_id}
    return Hypotheses([[t for t in h.tokens if t not in drop] for h in found], [h.score for h in found])


def _check_source(model: JanusModel, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> None:
    if src_tokens.dim() != 2 or src_lengths.dim() != 1 or src_tokens.shape[0] != src_lengths.shape[0]:
        raise ValueError(
            f"src_tokens must be (B, S) and src_lengths (B,); got {tuple(src_tokens.shape)} "
            f"and {tuple(src_lengths.shape)}"
        )
    if src_tokens.dtype != torch.long or src_lengths.dtype != torch.long:
        raise TypeError("src_tokens and src_lengths must be int64 tensors")
    if len(src_lengths) == 0:
        return
    if int(src_lengths.min()) < 1 or int(src_lengths.max()) > src_tokens.shape[1]:
        raise ValueError(f"src_lengths must be in [1, {src_tokens.shape[1]}]")
    if src_tokens.shape[1] > model.config.max_source_positions:
        raise ValueError(
            f"source length {src_tokens.shape[1]} exceeds max_source_positions {model.config.max_source_positions}"
        )
    if int(src_tokens.min()) < 0 or int(src_tokens.max()) >= model.config.vocab_size:
        raise ValueError(f"token ids must be in [0, {model.config.vocab_size})")
