"""`amortized`: SVI with an encoder q_phi(z | x), KL warm-up and free bits for the training
objective only. Pyro in pyro.py, NumPyro in numpyro.py."""
from __future__ import annotations

from ...flops import decoder_forward, encoder_forward
from ..descriptor import MethodDescriptor
from ..kl_shaping import FREE_BITS, KL_WARMUP, loss_is_bound


def flops_per_token(cfg) -> float:
    return 3 * decoder_forward(cfg.model) * cfg.inference.num_samples + 3 * encoder_forward(cfg.model)


METHOD = MethodDescriptor(
    name="amortized",
    summary="an encoder q_phi(z | x) trained jointly with the decoder (SVI)",
    classes={"pyro": "ltm_ppl.inference.amortized.pyro:PyroAmortized",
             "numpyro": "ltm_ppl.inference.amortized.numpyro:NumPyroAmortized"},
    proposal="the encoder's Gaussian",
    posterior_kind="variational",
    flops_per_token=flops_per_token,
    inner_steps=False,  # its q takes no inference steps
    needs_encoder=lambda cfg: True,
    loss_is_bound=loss_is_bound,
    options=(KL_WARMUP, FREE_BITS),  # shared with local (kl_shaping.py)
)
