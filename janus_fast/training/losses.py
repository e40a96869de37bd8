"""The JANUS training loss and the baselines' losses (``docs/method.md``, "Loss").

    L = CE_AR + w_ar_nar KL(AR, NAR) + w_ar_aux KL(AR, AUX)
        + w_ce_nar_aux (CE_NAR + CE_AUX) + w_length L_len + w_nar_aux KL(NAR, AUX)

CE is label-smoothed cross entropy averaged over tokens; KL is the symmetric
``0.5 (KL(p||q) + KL(q||p))`` summed over the vocabulary and averaged over tokens, without
stop-gradient. AR terms in the KLs use only the NAR-masked positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from janus_fast.arguments import check_field_types, flag, option


@dataclass
class LossWeights:
    """Weights of the JANUS loss terms (reference values by default)."""

    kl_ar_nar: float = option(
        1.0,
        ("weight of the symmetric KL between the AR and NAR distributions at the masked positions (--objective janus)"),
    )
    kl_ar_aux: float = option(
        3.0,
        (
            "weight of the symmetric KL between the AR and the auxiliary (AUX) distributions at the "
            "masked positions (--objective janus)"
        ),
    )
    ce_nar_aux: float = option(
        0.5,
        (
            "weight of the NAR and the AUX cross-entropies of the masked tokens, each (--objective janus;"
            " cmlm weighs its NAR cross-entropy 1)"
        ),
    )
    length: float = option(0.1, "weight of the target-length cross-entropy (--objective janus and cmlm)")
    kl_nar_aux: float = option(
        1.0,
        (
            "weight of the symmetric KL between the NAR and the AUX distributions at the masked positions"
            " (--objective janus)"
        ),
    )
    label_smoothing: float = option(0.1, "label smoothing epsilon of the AR, NAR and AUX cross-entropies")
    # Not in the reference method: P_AR as a fixed teacher in KL(AR, NAR) and KL(AR, AUX) (no
    # gradient reaches the AR side through them), to keep a warm-started AR side from being
    # pulled towards a still-poor NAR side.
    detach_ar_in_kl: bool = option(
        False,
        (
            "no gradient reaches the AR side through the KL(AR, NAR) and KL(AR, AUX) terms (P_AR a fixed "
            "teacher there, e.g. for a warm-started AR side; not in the reference method)"
        ),
    )

    def __post_init__(self) -> None:
        """Refuse weights no loss can use (named as the train command's options)."""
        check_field_types(self, lambda name: flag(f"weights_{name}"))
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "detach_ar_in_kl" and not 0 <= value < math.inf:
                raise ValueError(f"{flag(f'weights_{item.name}')} must be a finite number >= 0, got {value!r}")
        if not self.label_smoothing < 1:
            raise ValueError(f"--weights-label-smoothing must be in [0, 1), got {self.label_smoothing}")


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
    fused: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of ``JanusModel.forward`` outputs for ``objective`` and its terms (floats).

    tgt_tokens (B, L) int64, tgt_lengths (B,) int64, length_targets (B,) int64 length classes.
    ``fused`` computes the janus objective's token terms with ``fused_token_loss`` (training);
    the default is this module's reference formulation through autograd.
    """
    if fused and objective == "janus":
        assert length_targets is not None
        total, terms = fused_token_loss(
            outputs["ar_logits"],
            outputs["nar_logits"],
            outputs["aux_logits"],
            tgt_tokens,
            tgt_lengths,
            outputs["masked_positions"],
            outputs["masked_valid"],
            weights,
        )
        terms["length"] = F.cross_entropy(outputs["length_logits"].float(), length_targets)
        total = total + weights.length * terms["length"]
        return total, {name: float(value.detach()) for name, value in terms.items()}
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
            log_ar_kl = log_ar.detach() if weights.detach_ar_in_kl else log_ar
            log_nar = valid_log_probs(outputs["nar_logits"], valid)
            log_aux = valid_log_probs(outputs["aux_logits"], valid)
            terms["kl_ar_nar"] = symmetric_kl(log_ar_kl, log_nar)
            terms["kl_ar_aux"] = symmetric_kl(log_ar_kl, log_aux)
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


# ------------------------------------------------------------------------------------------------
# The fused token loss used for training: the same terms as ``compute_loss`` with gradients written
# by hand, each distribution's log-softmax computed once per chunk of rows, and nothing of size
# (rows, V) kept for autograd but the three gradients.


def _smoothed_ce_rows(
    log_probs: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row smoothed CE and its gradient w.r.t. the logits (not yet divided by the row count).

    log_probs, probs (R, V) fp32, targets (R,) int64 -> (loss (R,), grad (R, V)).
    """
    vocab = log_probs.shape[-1]
    picked = log_probs.gather(1, targets[:, None]).squeeze(1)
    loss = -(1.0 - epsilon) * picked - (epsilon / vocab) * log_probs.sum(-1)
    grad = probs - epsilon / vocab
    grad.scatter_add_(1, targets[:, None], grad.new_full((len(targets), 1), -(1.0 - epsilon)))
    return loss, grad


def _symmetric_kl_rows(
    log_p: torch.Tensor, log_q: torch.Tensor, p: torch.Tensor, q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row 0.5 (KL(p||q) + KL(q||p)) and its gradients w.r.t. the logits of p and of q.

    With d = log p - log q: dJ/dz_p = 0.5 (p (d - KL(p||q)) + p - q),
    dJ/dz_q = 0.5 (q (-d - KL(q||p)) + q - p). All (R, V) fp32; returns (J (R,), grad_p, grad_q).
    """
    d = log_p - log_q
    kl_pq = (p * d).sum(-1, keepdim=True)
    kl_qp = -(q * d).sum(-1, keepdim=True)
    diff = p - q
    grad_p = (d - kl_pq).mul_(p).add_(diff).mul_(0.5)
    grad_q = (d.neg_().sub_(kl_qp)).mul_(q).sub_(diff).mul_(0.5)
    return 0.5 * (kl_pq + kl_qp).squeeze(-1), grad_p, grad_q


class _FusedJanusLoss(torch.autograd.Function):
    """Weighted sum of CE_AR, CE_NAR, CE_AUX and the three symmetric KLs; see ``fused_token_loss``."""

    @staticmethod
    def forward(  # noqa: D102
        ctx,
        ar: torch.Tensor,
        nar: torch.Tensor,
        aux: torch.Tensor,
        ar_rows: torch.Tensor,
        ar_targets: torch.Tensor,
        masked_rows: torch.Tensor,
        ar_kl_rows: torch.Tensor,
        masked_targets: torch.Tensor,
        weights: LossWeights,
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        eps = weights.label_smoothing
        terms = torch.zeros(6, dtype=torch.float64)  # ce_ar ce_nar ce_aux kl_ar_nar kl_ar_aux kl_nar_aux
        grad_ar = torch.zeros(ar.shape, dtype=ar.dtype, device=ar.device)
        grad_nar = torch.zeros(nar.shape, dtype=nar.dtype, device=nar.device)
        grad_aux = torch.zeros(aux.shape, dtype=aux.dtype, device=aux.device)
        num_ar, num_masked = max(len(ar_rows), 1), max(len(masked_rows), 1)
        for start in range(0, len(ar_rows), chunk):
            rows = ar_rows[start : start + chunk]
            log_probs = F.log_softmax(ar[rows].float(), -1)
            loss, grad = _smoothed_ce_rows(log_probs, log_probs.exp(), ar_targets[start : start + chunk], eps)
            terms[0] += float(loss.sum())
            grad_ar.index_copy_(0, rows, grad.div_(num_ar).to(ar.dtype))
        ce_weight = weights.ce_nar_aux / num_masked
        kl_weights = [w / num_masked for w in (weights.kl_ar_nar, weights.kl_ar_aux, weights.kl_nar_aux)]
        for start in range(0, len(masked_rows), chunk):
            rows, ar_kl = masked_rows[start : start + chunk], ar_kl_rows[start : start + chunk]
            targets = masked_targets[start : start + chunk]
            log_ar = F.log_softmax(ar[ar_kl].float(), -1)
            log_nar = F.log_softmax(nar[rows].float(), -1)
            log_aux = F.log_softmax(aux[rows].float(), -1)
            p_ar, p_nar, p_aux = log_ar.exp(), log_nar.exp(), log_aux.exp()
            loss_nar, g_nar = _smoothed_ce_rows(log_nar, p_nar, targets, eps)
            loss_aux, g_aux = _smoothed_ce_rows(log_aux, p_aux, targets, eps)
            kl_ar_nar, ga_1, gn_1 = _symmetric_kl_rows(log_ar, log_nar, p_ar, p_nar)
            kl_ar_aux, ga_2, gx_2 = _symmetric_kl_rows(log_ar, log_aux, p_ar, p_aux)
            kl_nar_aux, gn_3, gx_3 = _symmetric_kl_rows(log_nar, log_aux, p_nar, p_aux)
            for index, value in enumerate((loss_nar, loss_aux, kl_ar_nar, kl_ar_aux, kl_nar_aux), start=1):
                terms[index] += float(value.sum())
            g_nar.mul_(ce_weight).add_(gn_1, alpha=kl_weights[0]).add_(gn_3, alpha=kl_weights[2])
            g_aux.mul_(ce_weight).add_(gx_2, alpha=kl_weights[1]).add_(gx_3, alpha=kl_weights[2])
            grad_nar.index_copy_(0, rows, g_nar.to(nar.dtype))
            grad_aux.index_copy_(0, rows, g_aux.to(aux.dtype))
            if not weights.detach_ar_in_kl:
                g_ar = ga_1.mul_(kl_weights[0]).add_(ga_2, alpha=kl_weights[1])
                grad_ar.index_add_(0, ar_kl, g_ar.to(ar.dtype))
        terms[0] /= num_ar
        terms[1:] /= num_masked
        coefficients = [1.0, weights.ce_nar_aux, weights.ce_nar_aux]
        coefficients += [weights.kl_ar_nar, weights.kl_ar_aux, weights.kl_nar_aux]
        total = (terms * torch.tensor(coefficients, dtype=torch.float64)).sum()
        ctx.save_for_backward(grad_ar, grad_nar, grad_aux)
        terms = terms.to(torch.float32)
        ctx.mark_non_differentiable(terms)
        return total.to(torch.float32), terms

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor, _grad_terms: torch.Tensor):  # noqa: ANN205, D102
        grad_ar, grad_nar, grad_aux = ctx.saved_tensors
        scale = grad_total.to(grad_ar.dtype)
        return grad_ar * scale, grad_nar * scale, grad_aux * scale, *([None] * 7)


def fused_token_loss(
    ar_logits: torch.Tensor,
    nar_logits: torch.Tensor,
    aux_logits: torch.Tensor,
    tgt_tokens: torch.Tensor,
    tgt_lengths: torch.Tensor,
    masked_positions: torch.Tensor,
    masked_valid: torch.Tensor,
    weights: LossWeights,
    chunk: int = 64,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The token terms of the JANUS loss, as ``compute_loss`` defines them, in one fused pass.

    ar_logits (B, L-1, V), nar_logits / aux_logits (B, K, V) (any float dtype, computed in fp32
    chunk by chunk), tgt_tokens (B, L), tgt_lengths (B,), masked_positions / masked_valid (B, K).
    Returns the weighted sum CE_AR + w KL(AR,NAR) + w KL(AR,AUX) + w (CE_NAR + CE_AUX) + w KL(NAR,AUX)
    (differentiable) and each term (fp32 scalars without gradient): the gradients of the terms are
    combined with ``weights`` during the forward pass and scaled by the total's in the backward.
    """
    batch, ar_width, vocab = ar_logits.shape
    width = nar_logits.shape[1]
    device = ar_logits.device
    ar_valid = torch.arange(ar_width, device=device)[None] < (tgt_lengths - 1)[:, None]
    ar_rows = ar_valid.reshape(-1).nonzero().squeeze(1)
    ar_targets = tgt_tokens[:, 1:].reshape(-1)[ar_rows]
    valid = masked_valid.reshape(-1)
    masked_rows = valid.nonzero().squeeze(1)
    sentence = torch.arange(batch, device=device)[:, None].expand(-1, width).reshape(-1)[masked_rows]
    positions = masked_positions.reshape(-1)[masked_rows]
    ar_kl_rows = sentence * ar_width + (positions - 1).clamp(min=0)
    masked_targets = tgt_tokens[sentence, positions]
    total, terms = _FusedJanusLoss.apply(
        ar_logits.reshape(-1, vocab),
        nar_logits.reshape(-1, vocab),
        aux_logits.reshape(-1, vocab),
        ar_rows,
        ar_targets,
        masked_rows,
        ar_kl_rows,
        masked_targets,
        weights,
        chunk,
    )
    names = ("ce_ar", "ce_nar", "ce_aux", "kl_ar_nar", "kl_ar_aux", "kl_nar_aux")
    return total, dict(zip(names, terms))
