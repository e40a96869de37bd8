"""The JANUS training loss and the baselines' losses (``docs/janus-method.md``, "Loss").

    L = CE_AR + w_ar_nar KL(AR, NAR) + w_ar_aux KL(AR, AUX)
        + w_ce_nar_aux (CE_NAR + CE_AUX) + w_length L_len + w_nar_aux KL(NAR, AUX)

CE is label-smoothed cross entropy averaged over tokens; KL is the symmetric
``0.5 (KL(p||q) + KL(q||p))`` summed over the vocabulary and averaged over tokens, without
stop-gradient. AR terms in the KLs use only the NAR-masked positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    """Weights of the JANUS loss terms (reference values by default)."""

    kl_ar_nar: float = 1.0
    kl_ar_aux: float = 3.0
    ce_nar_aux: float = 0.5
    length: float = 0.1
    kl_nar_aux: float = 1.0
    label_smoothing: float = 0.1


def smoothed_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """Label-smoothed CE averaged over valid tokens.

    logits (..., V) any float dtype (computed in fp32), targets (...) int64, valid (...) bool.
    """
    logits = logits[valid].float()
    return F.cross_entropy(logits, targets[valid], label_smoothing=epsilon)


def symmetric_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """0.5 (KL(p||q) + KL(q||p)) summed over V, averaged over tokens.

    log_p, log_q (M, V) float32 log-probabilities of the same M tokens.
    Uses 0.5 * sum((p - q) * (log p - log q)).
    """
    per_token = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)
    return 0.5 * per_token.mean()


def valid_log_probs(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """fp32 log-softmax of the valid rows: logits (..., V), valid (...) bool -> (M, V)."""
    return F.log_softmax(logits[valid].float(), dim=-1)


def compute_loss(
    outputs: dict[str, torch.Tensor],
    tgt_tokens: torch.Tensor,
    tgt_lengths: torch.Tensor,
    length_targets: torch.Tensor | None,
    objective: str,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of ``JanusModel.forward`` outputs for ``objective`` and its terms (floats).

    tgt_tokens (B, L) int64, tgt_lengths (B,) int64, length_targets (B,) int64 length classes.
    """
    eps = weights.label_smoothing
    terms: dict[str, torch.Tensor] = {}
    if "ar_logits" in outputs:
        ar_targets = tgt_tokens[:, 1:]
        ar_valid = torch.arange(ar_targets.shape[1], device=tgt_tokens.device)[None] < (tgt_lengths - 1)[:, None]
        terms["ce_ar"] = smoothed_cross_entropy(outputs["ar_logits"], ar_targets, ar_valid, eps)
    if "nar_logits" in outputs:
        positions, valid = outputs["masked_positions"], outputs["masked_valid"]
        masked_targets = tgt_tokens.gather(1, positions)
        terms["ce_nar"] = smoothed_cross_entropy(outputs["nar_logits"], masked_targets, valid, eps)
        assert length_targets is not None
        terms["length"] = F.cross_entropy(outputs["length_logits"].float(), length_targets)
        if "aux_logits" in outputs:
            terms["ce_aux"] = smoothed_cross_entropy(outputs["aux_logits"], masked_targets, valid, eps)
            index = (positions - 1).clamp(min=0)[..., None].expand(-1, -1, outputs["ar_logits"].shape[-1])
            log_ar = valid_log_probs(outputs["ar_logits"].gather(1, index), valid)
            log_nar = valid_log_probs(outputs["nar_logits"], valid)
            log_aux = valid_log_probs(outputs["aux_logits"], valid)
            terms["kl_ar_nar"] = symmetric_kl(log_ar, log_nar)
            terms["kl_ar_aux"] = symmetric_kl(log_ar, log_aux)
            terms["kl_nar_aux"] = symmetric_kl(log_nar, log_aux)

    if objective == "ar":
        total = terms["ce_ar"]
    elif objective == "cmlm":
        total = terms["ce_nar"] + weights.length * terms["length"]
    elif objective == "janus":
        total = (
            terms["ce_ar"]
            + weights.kl_ar_nar * terms["kl_ar_nar"]
            + weights.kl_ar_aux * terms["kl_ar_aux"]
            + weights.ce_nar_aux * (terms["ce_nar"] + terms["ce_aux"])
            + weights.length * terms["length"]
            + weights.kl_nar_aux * terms["kl_nar_aux"]
        )
    else:
        raise ValueError(f"unknown objective {objective!r}; expected janus, ar or cmlm")
    return total, {name: float(value.detach()) for name, value in terms.items()}
