"""MiM's losses (the paper's Eqs. 1-10; docs/method.md): per-level reconstruction, cross-level alignment, the total."""

from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor

# Table 14: reconstruction weights (L1, L2, L3) at the start and end of training.
LEVEL_WEIGHT_SCHEDULES = {
    "concurrent": ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
    "coarse_to_fine": ((2.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "fine_to_coarse": ((1.0, 0.0, 2.0), (1.0, 1.0, 1.0)),
}
NORM_PIX_EPS = 1e-6


def token_stats(target: Tensor, eps: float = NORM_PIX_EPS) -> Tuple[Tensor, Tensor]:
    """Each token's mean and sqrt(unbiased variance + eps) over its own P values: ``(..., P)`` ->
    two ``(..., 1)`` tensors (MAE's ``norm_pix_loss`` statistics)."""
    return target.mean(dim=-1, keepdim=True), (target.var(dim=-1, keepdim=True) + eps).sqrt()


def normalise_tokens(target: Tensor, eps: float = NORM_PIX_EPS) -> Tensor:
    """Norm-pix targets: each token ``(..., P)`` minus its mean, divided by its :func:`token_stats` scale."""
    mean, scale = token_stats(target, eps)
    return (target - mean) / scale


def denormalise_tokens(pred: Tensor, target: Tensor, eps: float = NORM_PIX_EPS) -> Tensor:
    """Inverse of :func:`normalise_tokens` with the target's own statistics: a norm-pix prediction
    ``(..., P)`` mapped back to intensities (for pictures)."""
    mean, scale = token_stats(target, eps)
    return pred * scale + mean


def has_content(target: Tensor) -> Tensor:
    """``(N, T, P)`` tokens -> ``(N, T)`` bool: the token is not constant. A constant token (padding, air
    clipped to the window's floor) has the norm-pix target 0, which predicting 0 scores exactly, so it
    would pull the loss of the mean predictor below 1.0."""
    return target.var(dim=-1) > 0


def reconstruction_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True,
                        denominator: Optional[Tensor] = None) -> Tensor:
    """Eqs. 1-2: mean over masked tokens of the per-token mean squared error.

    pred, target: ``(N, T, P)``; mask: ``(N, T)`` bool, True = masked (only those count). ``denominator``
    replaces this batch's masked-token count: a chunk of a level divides by the whole level's count, so
    that the chunks' losses (and gradients) sum to the level's.
    """
    if norm_pix:
        target = normalise_tokens(target)
    per_token = (pred - target).pow(2).mean(dim=-1)             # d_m, (N, T)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / (m.sum() if denominator is None else denominator)


def alignment_loss(child: Tensor, parents: Tensor, target: Tensor, kind: str = "infonce",
                   tau: float = 0.1, denominator: Optional[int] = None) -> Tensor:
    """Eqs. 4-7. child ``(N, D)``; parents ``(N, K, D)`` candidates of each child's parent volume;
    target ``(N,)`` index of the true source among the K.

    infonce: cross-entropy over logits cos(c, p_j) / tau. byol: 2 - 2 cos(c, p_target). The mean over
    the N children, or with ``denominator`` the sum divided by it (a chunk of a level's children).
    """
    cos = F.cosine_similarity(child.unsqueeze(1), parents, dim=-1)            # (N, K)
    if kind == "infonce":
        if denominator is None:
            return F.cross_entropy(cos / tau, target)
        return F.cross_entropy(cos / tau, target, reduction="sum") / denominator
    if kind == "byol":
        per_child = 2.0 - 2.0 * cos.gather(1, target.unsqueeze(1))
        return per_child.mean() if denominator is None else per_child.sum() / denominator
    raise ValueError(f"unknown alignment loss {kind!r}")


def level_weights(schedule: str, progress: float) -> Tuple[float, float, float]:
    """Reconstruction weights (L1, L2, L3) at ``progress`` in [0, 1] of training (Table 14): a cosine
    ramp from the schedule's start to its end values."""
    start, end = LEVEL_WEIGHT_SCHEDULES[schedule]
    ramp = 0.5 * (1.0 - math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return tuple(s + (e - s) * ramp for s, e in zip(start, end))


def term_weights(names: Iterable[str], loss_weights: Sequence[float], schedule: str,
                 progress: float) -> Dict[str, float]:
    """The weight of each named term in Eq. 10 (b1..b5, the level schedule multiplying b1..b3)."""
    lw = level_weights(schedule, progress)
    weights = {"rec_l1": loss_weights[0] * lw[0], "rec_l2": loss_weights[1] * lw[1],
               "rec_l3": loss_weights[2] * lw[2], "align_12": loss_weights[3], "align_23": loss_weights[4]}
    return {name: weights[name] for name in names}


def total_loss(terms: Dict[str, Tensor], loss_weights: Sequence[float], schedule: str,
               progress: float) -> Tuple[Tensor, Dict[str, float]]:
    """Eq. 10: b1 L_R^1 + b2 L_R^2 + b3 L_R^3 + b4 L_C^12 + b5 L_C^23 over the terms present.

    The level schedule multiplies b1..b3. Returns the total and the weight used for each term.
    """
    used = term_weights(terms, loss_weights, schedule, progress)
    total = sum(used[name] * value for name, value in terms.items())
    return total, used
