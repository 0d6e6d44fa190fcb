"""`amortized`: SVI with an encoder q_phi(z | x), KL warm-up and free bits for the training
objective only. Pyro in pyro.py, NumPyro in numpyro.py."""
from __future__ import annotations

from ..descriptor import MethodDescriptor, Option


def flops_per_token(cfg) -> float:
    from ...flops import decoder_forward, encoder_forward

    return 3 * decoder_forward(cfg.model) * cfg.inference.num_samples + 3 * encoder_forward(cfg.model)


def loss_is_bound(cfg, metrics) -> bool:
    """The shaped objective bounds the NLL only at full KL weight and without free bits."""
    return metrics.get("beta", 1.0) == 1.0 and cfg.inference.free_bits == 0


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
    options=(
        Option("kl_warmup_iters", int, 0, "amortized: KL weight warm-up iterations.", flag="--kl-warmup",
               check="non_negative"),
        Option("free_bits", float, 0.0, "amortized: minimum KL per latent vector (nats).", flag="--free-bits",
               check="non_negative"),
    ),
)
