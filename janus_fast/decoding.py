"""``generate``: one entry point on tensors, dispatching to the fast engine (``janus_fast.engine``)
or the reference decoders (``janus_fast.reference_decoding``), with the checks of its arguments.
"""

from __future__ import annotations

import torch

from janus_fast import engine, reference_decoding
from janus_fast.arguments import check_int
from janus_fast.model import JanusModel
from janus_fast.search import Hypotheses

MAX_BEAM = 128  # AR beam sizes above this can only be a mistake (rows = sentences x beam)


def check_decoding_options(model: JanusModel, mode: str, iterations: int, length_beam: int, beam: int) -> None:
    """TypeError / ValueError for options no decoding can use: iterations in [1, max target
    positions], length_beam in [1, length classes] (capped later by the possible lengths), beam in
    [1, MAX_BEAM]."""
    if mode not in ("nar", "ar"):
        raise ValueError(f"unknown mode {mode!r}; expected 'nar' or 'ar'")
    config = model.config
    check_int("iterations", iterations, 1, config.max_target_positions)
    check_int("length_beam", length_beam, 1, config.num_length_classes)
    check_int("beam", beam, 1, MAX_BEAM)


def generate(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    mode: str = "nar",
    iterations: int = 10,
    length_beam: int = 3,
    beam: int = 1,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    decoder: str = "engine",
    return_scores: bool = False,
    decoder_weights: str = "fp32",
) -> list[list[int]] | Hypotheses:
    """Translate a padded batch of source ids; returns target ids per sentence (no bos/eos/pad),
    or with ``return_scores`` the ``Hypotheses`` (ids and each sentence's score: mean token
    log-probability for NAR, length-normalised log-probability for AR).

    src_tokens (B, S) int64 right-padded, src_lengths (B,) int64 >= 1; mode "nar" (mask-predict,
    ``iterations`` x ``length_beam``) or "ar" (``beam`` 1 = greedy). decoder "engine" (the fast
    path, ``janus_fast.engine``) or "reference" (``janus_fast.reference_decoding``); both give the
    same outputs. ``decoder_weights`` ("fp32", "bf16", "int8"): the engine's native CPU passes store
    their weights in that type (``janus_fast.native_decoder``); anything but fp32 changes outputs
    slightly.
    """
    _check_source(model, src_tokens, src_lengths)
    check_decoding_options(model, mode, iterations, length_beam, beam)
    if decoder not in ("engine", "reference"):
        raise ValueError(f"unknown decoder {decoder!r}; expected 'engine' or 'reference'")
    if decoder_weights not in ("fp32", "bf16", "int8"):
        raise ValueError(f"decoder_weights must be 'fp32', 'bf16' or 'int8', got {decoder_weights!r}")
    if decoder_weights != "fp32" and decoder != "engine":
        raise ValueError("decoder_weights other than 'fp32' need decoder='engine'")
    if len(src_lengths) == 0:
        hypotheses = Hypotheses([], [])
    elif decoder == "engine":
        if mode == "nar":
            hypotheses = engine.mask_predict(model, src_tokens, src_lengths, iterations, length_beam, decoder_weights)
        else:
            hypotheses = engine.ar_search(model, src_tokens, src_lengths, beam, max_len_a, max_len_b, decoder_weights)
    elif mode == "nar":
        hypotheses = reference_decoding.mask_predict(model, src_tokens, src_lengths, iterations, length_beam)
    else:
        hypotheses = reference_decoding.ar_search(model, src_tokens, src_lengths, beam, max_len_a, max_len_b)
    return hypotheses if return_scores else hypotheses.tokens


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
