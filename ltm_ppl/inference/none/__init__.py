"""`none`: the decoder without latents, maximum likelihood (the autoregressive baseline).
Pyro in pyro.py, NumPyro in numpyro.py."""
from __future__ import annotations

from ...flops import decoder_forward
from ..descriptor import MethodDescriptor


def flops_per_token(cfg) -> float:
    return 3 * decoder_forward(cfg.model)


METHOD = MethodDescriptor(
    name="none",
    summary="the decoder alone, no latent (maximum likelihood)",
    classes={"pyro": "ltm_ppl.inference.none.pyro:PyroNone", "numpyro": "ltm_ppl.inference.none.numpyro:NumPyroNone"},
    proposal="none (exact log-likelihood, no latent)",
    posterior_kind=None,
    flops_per_token=flops_per_token,
    inner_steps=False,  # its q takes no inference steps
    latent=False,
    loss_is_bound=lambda cfg, metrics: True,  # the exact NLL
)
