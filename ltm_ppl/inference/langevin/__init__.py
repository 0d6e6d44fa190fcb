"""`langevin`: vectorised (Metropolis-adjusted) Langevin chains on log p(x, z), Monte Carlo EM for
the decoder. Pyro in pyro.py, NumPyro in numpyro.py."""
from __future__ import annotations

from ..descriptor import MethodDescriptor, Option


def flops_per_token(cfg) -> float:
    """`steps` Langevin steps per chain (forward + activation-only backward), then the slow step."""
    from ...flops import decoder_forward

    F, inf = decoder_forward(cfg.model), cfg.inference
    return 2 * F * inf.steps * inf.chains + 3 * F * inf.chains


METHOD = MethodDescriptor(
    name="langevin",
    summary="(MALA) Langevin chains per sequence, Monte Carlo EM for the decoder",
    classes={"pyro": "ltm_ppl.inference.langevin.pyro:PyroLangevin",
             "numpyro": "ltm_ppl.inference.langevin.numpyro:NumPyroLangevin"},
    proposal="diagonal Gaussian fitted to each sequence's Langevin draws",
    posterior_kind="chains",
    flops_per_token=flops_per_token,
    # loss_is_bound: never (the NLL at one draw z_K)
    options=(
        Option("step_size", float, 0.1, "langevin: initial step size.", flag="--step-size", check="positive"),
        Option("mala", bool, True, "langevin: Metropolis adjustment (default on).", flag="--mala"),
        Option("target_accept", float, 0.57, "langevin: acceptance the warm-up adapts toward.", flag="--target-accept",
               check="open_unit"),
        Option("chains", int, 1, "langevin: chains per sequence.", flag="--chains", check="positive"),
        Option("draws", int, 16, "langevin: kept draws per chain for bounds.", flag="--draws", check="positive"),
    ),
)
