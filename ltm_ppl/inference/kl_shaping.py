"""KL warm-up and free bits: options shared by `amortized` and `local`, and the rule that a shaped
training loss is no bound. They shape the *training* objective only; every reported number is the
plain ELBO / IWAE. No torch, no jax (descriptors import this)."""
from __future__ import annotations

from .descriptor import Option

KL_WARMUP = Option(
    "kl_warmup_iters", int, 0,
    "amortized, local: the training objective's KL weight rises linearly to 1 over the first N iterations "
    "(local: the q the decoder trains on is fitted to it; reported bounds never are).",
    flag="--kl-warmup", check="non_negative")
FREE_BITS = Option(
    "free_bits", float, 0.0,
    "amortized, local: minimum KL per latent vector (nats) in the training objective (reported bounds are never shaped).",
    flag="--free-bits", check="non_negative")


def shaping_on(inf_cfg) -> bool:
    """Is the training objective shaped at all in this run (a warm-up or free bits configured)?"""
    return inf_cfg.kl_warmup_iters > 0 or inf_cfg.free_bits > 0


def loss_is_bound(cfg, metrics) -> bool:
    """The shaped objective bounds the NLL only at full KL weight and without free bits."""
    return metrics.get("beta", 1.0) == 1.0 and cfg.inference.free_bits == 0
