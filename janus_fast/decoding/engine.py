"""The fast decode engine: the reference decoders' outputs with less work, every mode over the
decoder passes chosen once (``janus_fast.decoding.passes.PassChoice``: one native CPU call per
pass where the extension is built and the model is a plain JanusModel, else PyTorch ops).

* NAR (``mask_predict``): the one mask-predict loop (``janus_fast.decoding.mask_predict``) under
  this project's policy: the encoder and its cross-attention keys/values run once; each iteration
  runs the decoder over the real positions only and fills only the masked ones.
* AR greedy (``ar_search``, beam 1): a preallocated key/value cache, the choice inside the step, no beam
  bookkeeping (``janus_fast.decoding.ar``); beam search (``ar_search``) is the one beam search loop
  over the same steps.
* Speculative (``speculative``): NAR drafts, AR verifies (``janus_fast.decoding.speculative``).

``precision`` ("fp32", "bf16", "int8") is the decode precision (``PassChoice``); fp32 gives the
reference's tokens (``janus_fast.decoding.reference``), token for token; the tests check it.
"""

from __future__ import annotations

import torch

from janus_fast.decoding.ar import beam_search
from janus_fast.decoding.ar import greedy as greedy_loop
from janus_fast.decoding.beam import janus_hypotheses, janus_rules, max_ar_lengths
from janus_fast.decoding.hypotheses import Hypotheses
from janus_fast.decoding.mask_predict import MaskPredictPolicy
from janus_fast.decoding.mask_predict import mask_predict as mask_predict_loop
from janus_fast.decoding.options import JANUS_MAX_LEN, PLAIN_RANKING, CandidateRanking, SpeculativeOptions
from janus_fast.decoding.passes import PassChoice
from janus_fast.decoding.speculative import SpeculativeStats, speculative_greedy
from janus_fast.model import JanusModel


def _choice(model: JanusModel, precision: str, choice: PassChoice | None) -> PassChoice:
    return choice if choice is not None else PassChoice(model, precision)


@torch.inference_mode()
def mask_predict(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    num_iterations: int = 10,
    length_beam: int = 3,
    precision: str = "fp32",
    ranking: CandidateRanking = PLAIN_RANKING,
    choice: PassChoice | None = None,
) -> Hypotheses:
    """Mask-predict as ``janus_fast.decoding.reference.mask_predict``, filling only masked positions.
    ``ranking``: how each sentence's candidate is picked (with ``ar_rescore``, by the AR scores of one
    teacher-forced pass of both streams); ``choice``: passes chosen
    already (a ``Translator``'s), else chosen here for ``precision``.

    src_tokens (B, S) int64, src_lengths (B,) int64.
    """
    passes = _choice(model, precision, choice).passes()
    policy = MaskPredictPolicy(ranking)
    return mask_predict_loop(passes.model, passes, src_tokens, src_lengths, num_iterations, length_beam, policy)


@torch.inference_mode()
def ar_search(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    beam: int = 1,
    max_len: tuple[float, int] = JANUS_MAX_LEN,
    precision: str = "fp32",
    choice: PassChoice | None = None,
) -> Hypotheses:
    """AR search as the reference's: greedy (beam 1) through the greedy loop, beam search through
    the one beam search loop, both over the passes' cached steps. src_tokens (B, S) int64,
    src_lengths (B,) int64."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    passes = _choice(model, precision, choice).passes()
    if beam == 1:
        return greedy_loop(passes.model, passes, src_tokens, src_lengths, max_ar_lengths(src_lengths, model, max_len))
    row_limits = max_ar_lengths(src_lengths, model, max_len).repeat_interleave(beam)
    found = beam_search(passes, src_tokens, src_lengths, janus_rules(model), beam, row_limits)
    return janus_hypotheses(model, found)


@torch.inference_mode()
def speculative(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    max_len: tuple[float, int] = JANUS_MAX_LEN,
    precision: str = "fp32",
    options: SpeculativeOptions | None = None,
    stats: SpeculativeStats | None = None,
    choice: PassChoice | None = None,
) -> Hypotheses:
    """Speculative decoding (``janus_fast.decoding.speculative``): with exact verification the
    tokens and scores of ``ar_search`` (beam 1) at the same precision. ``options`` None: the defaults; ``stats``,
    when given, counts rounds and accepted tokens. With exact verification a batch of more than
    ``options.speculate_up_to`` sentences runs AR greedy's steps instead (the same output; not
    counted in ``stats``).

    src_tokens (B, S) int64, src_lengths (B,) int64.
    """
    chosen = _choice(model, precision, choice)
    if chosen.dynamic_int8:
        raise ValueError(
            "mode 'spec' with precision 'int8' needs the engine's native passes: PyTorch's int8 layers quantize a "
            "batch's activations with one range, so a verification could not reproduce AR greedy's steps (use fp32 "
            "or bf16, or build the native extension: python -m janus_fast.native)"
        )
    passes = chosen.passes()
    limits = max_ar_lengths(src_lengths, model, max_len)
    options = options if options is not None else SpeculativeOptions()
    if options.relaxed_top_k == 0 and 0 < options.speculate_up_to < len(src_lengths):
        return greedy_loop(passes.model, passes, src_tokens, src_lengths, limits)
    return speculative_greedy(passes.model, passes, src_tokens, src_lengths, limits, options, stats)
