"""Step-size schedules shared by every backend (plain floats, so both PPLs agree exactly)."""
from __future__ import annotations

import math

from .kl_shaping import shaping_on


def fast_lr(step: int, steps: int, lr: float, final_ratio: float, denominator: str = "T-1") -> float:
    """Cosine decay of the inner loop from lr at step 0: over step / (steps - 1), reaching
    lr * final_ratio at the last step ("T-1"), or over step / steps as the published loop does
    ("T": the last step stays above lr * final_ratio)."""
    span = steps if denominator == "T" else steps - 1
    if span <= 0:
        return lr
    final = lr * final_ratio
    return final + 0.5 * (lr - final) * (1 + math.cos(math.pi * step / span))


def slow_lr(iteration: int, train_cfg) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at lr_decay_iters (the slow step)."""
    lr, horizon = train_cfg.lr, train_cfg.lr_decay_iters or train_cfg.iters
    if iteration < train_cfg.warmup_iters:
        return lr * (iteration + 1) / train_cfg.warmup_iters
    low = lr * train_cfg.min_lr_ratio
    if iteration >= horizon:
        return low
    progress = (iteration - train_cfg.warmup_iters) / max(1, horizon - train_cfg.warmup_iters)
    return low + 0.5 * (lr - low) * (1 + math.cos(math.pi * progress))


def kl_weight(iteration: int, warmup_iters: int) -> float:
    """Linear KL warm-up of the amortized objective: 1/W, 2/W, ... 1 over the first W iterations
    (1 without warm-up). Changes the training objective only, never a reported bound."""
    return min(1.0, (iteration + 1) / warmup_iters) if warmup_iters else 1.0


def kl_shape(iteration: int, inf_cfg) -> tuple[float, float] | None:
    """(KL weight, free bits per latent vector) of the training objective at `iteration`, or None
    when the run configures neither (the objective is the plain ELBO)."""
    if not shaping_on(inf_cfg):  # the one rule, shared with the NumPyro local step's compiled branch
        return None
    return kl_weight(iteration, inf_cfg.kl_warmup_iters), float(inf_cfg.free_bits)


def fast_loss_divisor(inf_cfg, window_tokens: int) -> float:
    """What the fast steps divide their summed negative ELBO by: the predicted tokens per window
    (fast_loss "per_token"), or 1 (fast_loss "sum": summed over tokens and sequences, as the
    published loop; through Adam's eps the scale moves q, slightly)."""
    return float(max(1, window_tokens - 1)) if inf_cfg.fast_loss == "per_token" else 1.0
