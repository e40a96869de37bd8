"""``generate``: one entry point on tensors. Its options are ``DecodeOptions``
(``janus_fast.decoding.options``), checked and resolved once per call; the decoder passes are
chosen once per call (``PassChoice``); ``decode_batch`` then runs the fast engine
(``janus_fast.decoding.engine``), the reference decoders (``janus_fast.decoding.reference``) or,
with compat "fairseq", fairseq-generate's decoding (``janus_fast.decoding.fairseq``).
"""

from __future__ import annotations

import torch

from janus_fast.arguments import check_bool
from janus_fast.decoding import engine, fairseq, reference
from janus_fast.decoding.hypotheses import Hypotheses, collapse_repeats
from janus_fast.decoding.options import DecodeOptions
from janus_fast.decoding.passes import PassChoice
from janus_fast.decoding.speculative import SpeculativeStats
from janus_fast.model import JanusModel


def generate(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    options: DecodeOptions | None = None,
    *,
    return_scores: bool = False,
    **changes: object,
) -> list[list[int]] | Hypotheses:
    """Translate a padded batch of source ids; returns target ids per sentence (no bos/eos/pad),
    or with ``return_scores`` the ``Hypotheses`` (ids and each sentence's score: mean token
    log-probability for NAR, length-normalised log-probability for AR and speculative).

    src_tokens (B, S) int64 right-padded, src_lengths (B,) int64 >= 1. ``options`` (default
    ``DecodeOptions()``: AR greedy with the engine in fp32) and keyword ``changes`` to it, e.g.
    ``generate(model, src, lengths, mode="nar", iterations=4)``; see ``DecodeOptions`` for every
    option and its default:

    * mode "ar" (``beam``; 1 = greedy), "nar" (mask-predict, ``iterations`` x ``length_beam``) or
      "spec" (speculative: the NAR side drafts, the AR side verifies; AR greedy's tokens and scores
      at the same precision; ``speculative`` sets its options, its relaxed verification trades that
      exactness for speed);
    * decoder "engine" (fast) or "reference" (plain PyTorch; the same outputs); precision "fp32",
      "bf16" or "int8" (``janus_fast.decoding.passes.PassChoice``; anything but fp32 changes
      outputs slightly);
    * compat "janus" (this project's semantics) or "fairseq": fairseq-generate's mask-predict
      (``iterations`` is its ``--iter-decode-max-iter``, iterations + 1 passes; ``force_max_iter``
      its ``--iter-decode-force-max-iter``) or, for mode "ar", its beam search; the tokens then keep
      ``<unk>`` and the score is fairseq's. Options left None take the compat's defaults.
    * ``max_len_a``, ``max_len_b`` (AR): at most ``max_len_a * source length + max_len_b`` tokens;
    * NAR with compat "janus": ``collapse_repeats`` (default on), ``ar_rescore`` (pick each
      sentence's length candidate by the model's AR score of it) and the length bonus per target
      token of a candidate's ranking (default: the model's own, kept in its config).

    ``model`` must be in eval mode (a ValueError otherwise: in training mode dropout would change
    the tokens on every call); ``Translator`` puts its model there itself.
    """
    if not isinstance(model, JanusModel):
        raise TypeError(
            f"generate() needs a JanusModel (janus_fast.model; Translator.from_pretrained(...).model loads one), "
            f"got {type(model).__name__}"
        )
    if model.training:
        raise ValueError(
            "generate() needs the model in eval mode, but it is in training mode (dropout would change "
            "the output on every call): call model.eval() first"
        )
    check_bool("return_scores", return_scores)
    _check_source(model, src_tokens, src_lengths)
    if options is not None and not isinstance(options, DecodeOptions):
        raise TypeError(f"options must be a DecodeOptions, got {type(options).__name__}")
    resolved = (options if options is not None else DecodeOptions()).replace(**changes).resolve(model.config)
    choice = PassChoice(model, resolved.precision, native=resolved.decoder == "engine")
    hypotheses = decode_batch(model, src_tokens, src_lengths, resolved, choice)
    return hypotheses if return_scores else hypotheses.tokens


def decode_batch(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    options: DecodeOptions,
    choice: PassChoice,
    stats: SpeculativeStats | None = None,
) -> Hypotheses:
    """Decode one checked batch with resolved ``options`` (``DecodeOptions.resolve``) over the passes
    of ``choice``; ``stats`` counts speculative decoding's rounds. No argument checks here."""
    if len(src_lengths) == 0:
        return Hypotheses([], [])
    mode = options.mode
    src = (model, src_tokens, src_lengths)
    limits = (options.max_len_a, options.max_len_b)
    if options.compat == "fairseq":
        if mode == "ar":
            found = fairseq.ar_beam_search(*src, options.beam, limits, choice=choice)
        else:
            found = fairseq.mask_predict(
                *src, options.iterations, options.length_beam, options.force_max_iter, choice=choice
            )
        drop = {model.config.bos_id, model.config.eos_id, model.config.pad_id}
        tokens = [[t for t in h.tokens if t not in drop] for h in found]
        return Hypotheses(tokens, [h.score for h in found], [h.positional_scores for h in found])
    if options.decoder == "reference":
        reference_model = choice.torch_model
        if mode == "nar":
            hypotheses = reference.mask_predict(
                reference_model, src_tokens, src_lengths, options.iterations, options.length_beam, options.ranking
            )
        else:  # exact speculative decoding gives AR greedy's output: its reference is AR greedy
            beam = 1 if mode == "spec" else options.beam
            hypotheses = reference.ar_search(reference_model, src_tokens, src_lengths, beam, limits)
    else:
        hypotheses = engine.decode(choice, src_tokens, src_lengths, options, stats)
    if options.collapse_repeats:
        hypotheses = Hypotheses([collapse_repeats(tokens) for tokens in hypotheses.tokens], hypotheses.scores)
    return hypotheses


def _check_source(model: JanusModel, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> None:
    for name, value in (("src_tokens", src_tokens), ("src_lengths", src_lengths)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (int64), got {type(value).__name__}")
        if value.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (no data): pass tensors on the model's device")
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
