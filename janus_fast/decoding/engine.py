"""The fast decode engine: the reference decoders' outputs with less work, every mode over the
decoder passes chosen once (``janus_fast.decoding.passes.PassChoice``: one native CPU call per
pass where the extension is built and the model is a plain JanusModel, else PyTorch ops).

``decode`` runs one batch in the mode its options name:

* "nar": the one mask-predict loop (``janus_fast.decoding.mask_predict``) under this project's
  policy: the encoder and its cross-attention keys/values run once; each iteration runs the
  decoder over the real positions only and fills only the masked ones.
* "ar", beam 1: AR greedy with a preallocated key/value cache and the choice inside the step, no
  beam bookkeeping (``janus_fast.decoding.ar``); beam > 1: the one beam search loop over the same
  steps.
* "spec": NAR drafts, AR verifies (``janus_fast.decoding.speculative``).

The options' precision ("fp32", "bf16", "int8") is the choice's; fp32 gives the reference's
tokens (``janus_fast.decoding.reference``), token for token; the tests check it.
"""

from __future__ import annotations

import torch

from janus_fast.decoding.ar import beam_search
from janus_fast.decoding.ar import greedy as greedy_loop
from janus_fast.decoding.beam import janus_hypotheses, janus_rules, max_ar_lengths
from janus_fast.decoding.hypotheses import Hypotheses
from janus_fast.decoding.mask_predict import MaskPredictPolicy
from janus_fast.decoding.mask_predict import mask_predict as mask_predict_loop
from janus_fast.decoding.options import USED_COUNTS, DecodeOptions
from janus_fast.decoding.passes import PassChoice
from janus_fast.decoding.speculative import SpeculativeStats, speculative_greedy


@torch.inference_mode()
def decode(
    choice: PassChoice,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    options: DecodeOptions,
    stats: SpeculativeStats | None = None,
) -> Hypotheses:
    """Decode one batch over the passes of ``choice`` (its model, precision and native-or-not) with
    ``options`` resolved for the model (``DecodeOptions.resolve``; compat "janus", decoder
    "engine"): their values are not checked again here (``generate`` checks them), but options not
    resolved are refused with a ValueError. The candidate ranking of mode "nar"
    is ``options.ranking``; ``stats``, when given, counts speculative decoding's rounds and accepted
    tokens. Repeats are not collapsed here (``generate`` does that).

    With exact verification mode "spec" gives the tokens and scores of mode "ar", beam 1, at the
    same precision; a batch of more than ``options.speculative.speculate_up_to`` sentences then
    runs AR greedy's steps instead (the same output; not counted in ``stats``).

    src_tokens (B, S) int64, src_lengths (B,) int64.
    """
    used = USED_COUNTS.get(options.mode)
    if used is None:
        unresolved = f"unknown mode {options.mode!r}"
    else:
        unset = [name for name in used if getattr(options, name) is None]
        if options.mode == "spec" and options.speculative is None:
            unset.append("speculative")
        unresolved = f"{', '.join(unset)} unset for mode {options.mode!r}" if unset else None
    if unresolved is not None:
        raise ValueError(
            f"engine.decode needs options resolved for the model (DecodeOptions.resolve, as generate does): "
            f"{unresolved}"
        )
    model = choice.model
    if options.mode == "spec" and choice.dynamic_int8:
        raise ValueError(
            "mode 'spec' with precision 'int8' needs the engine's native passes: PyTorch's int8 layers quantize a "
            "batch's activations with one range, so a verification could not reproduce AR greedy's steps (use fp32 "
            "or bf16, or build the native extension: python -m janus_fast.native)"
        )
    passes = choice.passes()
    if options.mode == "nar":
        policy = MaskPredictPolicy(options.ranking)
        return mask_predict_loop(
            passes.model, passes, src_tokens, src_lengths, options.iterations, options.length_beam, policy
        )
    limits = max_ar_lengths(src_lengths, model, (options.max_len_a, options.max_len_b))
    if options.mode == "spec":
        speculative = options.speculative
        if speculative.relaxed_top_k == 0 and 0 < speculative.speculate_up_to < len(src_lengths):
            return greedy_loop(passes.model, passes, src_tokens, src_lengths, limits)
        return speculative_greedy(passes.model, passes, src_tokens, src_lengths, limits, speculative, stats)
    if options.beam == 1:
        return greedy_loop(passes.model, passes, src_tokens, src_lengths, limits)
    found = beam_search(
        passes, src_tokens, src_lengths, janus_rules(model), options.beam, limits.repeat_interleave(options.beam)
    )
    return janus_hypotheses(model, found)
