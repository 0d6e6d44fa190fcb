"""The Gaussian maths of the variational methods, written once for every array library.

Each function takes its array namespace `xp` (numpy, torch or jax.numpy: all three spell `exp`
and `clip` alike), so the Pyro path, the NumPyro path and the diagnostics compute the same formula
from the same text. No torch, no jax here: descriptors and diagnostics import this.
"""
from __future__ import annotations

# The published start of the fast loop: mu = 0.01 N(0, 1), log variance = -5 + 0.1 N(0, 1).
PUBLISHED_LOC_SPREAD = 0.01
PUBLISHED_LOG_VARIANCE = -5.0
PUBLISHED_LOG_VARIANCE_SPREAD = 0.1

# The fast optimiser's Adam / AdamW constants: torch.optim's defaults, which the published loop
# uses; optax's scale_by_adam is given the same.
FAST_BETA1, FAST_BETA2, FAST_ADAM_EPS = 0.9, 0.999, 1e-8

# The floor of the standard deviation of the Gaussian a chain method fits to its draws (its q):
# chains that never moved give a narrow, finite q rather than a log of 0.
DRAWS_FIT_MIN_SCALE = 1e-4


def kl_per_vector(loc, log_scale, xp):
    """Analytic KL(N(loc, exp(log_scale)^2) || N(0, I)) per latent vector: the elementwise KL
    summed over the last dim, [..., n_z, d_z] -> [..., n_z]."""
    return (0.5 * (loc**2 + xp.exp(2 * log_scale) - 1 - 2 * log_scale)).sum(-1)


def shaped_kl(loc, log_scale, beta, free_bits, xp):
    """The training objective's KL term per sequence [B]: beta * sum_j max(free_bits, KL_j), KL_j
    the analytic KL of latent vector j (a KL warm-up, free bits). Never in a reported bound."""
    return beta * xp.clip(kl_per_vector(loc, log_scale, xp), free_bits, None).sum(-1)


def published_start(loc_draw, log_variance_draw):
    """(loc, log_scale) of the published start from two standard normal draws of the same shape."""
    log_variance = PUBLISHED_LOG_VARIANCE + PUBLISHED_LOG_VARIANCE_SPREAD * log_variance_draw
    return PUBLISHED_LOC_SPREAD * loc_draw, 0.5 * log_variance


def fit_to_draws(draws, xp, min_scale: float = DRAWS_FIT_MIN_SCALE):
    """(loc, log_scale) [B, ...] of the diagonal Gaussian fitted to draws [N, B, ...] of each
    sequence: their mean, and their standard deviation (ddof 0) floored at min_scale."""
    loc = draws.mean(0)
    scale = xp.sqrt(((draws - loc) ** 2).mean(0))
    return loc, xp.log(xp.clip(scale, min_scale, None))
