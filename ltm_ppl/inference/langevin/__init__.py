"""`langevin`: gradient-based MCMC on log p(x, z) per sequence and chain (kernels MALA, HMC, NUTS),
Monte Carlo EM for the decoder. Pyro in pyro.py, NumPyro in numpyro.py (HMC / NUTS from blackjax
in blackjax_kernels.py)."""
from __future__ import annotations

from ...errors import LtmError
from ...flops import decoder_forward
from ..descriptor import MethodDescriptor, Option

KERNELS = ("mala", "hmc", "nuts")
# HMC / NUTS warm-ups shorter than this keep --step-size (and a unit mass matrix) unadapted, the
# steps only burning in: dual averaging over a handful of steps ends far too large (measured: 20
# steps took 0.1 to ~1.5 on a small LTM, acceptance ~0), e.g. the 2 warm-up steps of a default fit.
MIN_ADAPT_WARMUP = 50
# A NUTS tree of 2^20 - 1 leapfrog steps per draw is beyond any budget here (and near int32 counts).
MAX_TREE_DEPTH = 20
FIT_KERNELS = ("mala", "hmc")  # NUTS's trajectory length varies per pair: eval / diagnose only


def gradients_per_step(inf) -> int:
    """Gradient evaluations of log p(x, z) per sampler step and chain (NUTS: its cap is unknown
    beforehand; it is not a training kernel)."""
    return inf.leapfrog_steps if inf.kernel == "hmc" else 1


def training_schedule(inf) -> tuple[int, int]:
    """(warm-up steps, kept steps) of one training iteration: `warmup` then `steps` when warmup is
    set, else the first steps // 2 of `steps` adapt (the historical default)."""
    if inf.warmup > 0:
        return inf.warmup, inf.steps
    return inf.steps // 2, inf.steps - inf.steps // 2


def flops_per_token(cfg) -> float:
    """Counted gradient evaluations: every sampler step of every chain costs gradients_per_step
    decoder forwards + activation-only backwards (2 F each), a local start its fast steps, then
    the slow step (3 F per chain)."""
    F, inf = decoder_forward(cfg.model), cfg.inference
    warmup, kept = training_schedule(inf)
    flops = 2 * F * (warmup + kept) * gradients_per_step(inf) * inf.chains + 3 * F * inf.chains
    if inf.init == "local":
        flops += 2 * F * inf.steps * inf.num_samples
    return flops


def check_fit(cfg) -> None:
    """What `ltm fit` refuses for this method (before anything is written)."""
    inf = cfg.inference
    if inf.kernel not in FIT_KERNELS:
        raise LtmError(f"--kernel {inf.kernel} is for eval / diagnose; fit takes {' or '.join(FIT_KERNELS)}")
    if inf.init == "amortized":
        raise LtmError("--init amortized needs a trained encoder: use it with eval / diagnose on a run trained with "
                       "--inference amortized (langevin training does not train an encoder)")


METHOD = MethodDescriptor(
    name="langevin",
    summary="MCMC per sequence and chain (MALA, HMC, NUTS) on log p(x, z), Monte Carlo EM for the decoder",
    classes={"pyro": "ltm_ppl.inference.langevin.pyro:PyroLangevin",
             "numpyro": "ltm_ppl.inference.langevin.numpyro:NumPyroLangevin"},
    proposal="diagonal Gaussian fitted to each sequence's Langevin draws",
    posterior_kind="chains",
    flops_per_token=flops_per_token,
    # loss_is_bound: never (the NLL at one draw z_K)
    needs_encoder=lambda cfg: cfg.inference.init == "amortized",
    check_fit=check_fit,
    options=(
        Option("kernel", str, "mala", "langevin: sampler kernel, one per chain and sequence: mala, hmc, nuts "
               "(nuts: eval / diagnose only; nuts on --backend pyro is refused).", flag="--kernel", choices=KERNELS),
        Option("leapfrog_steps", int, 8, "langevin: leapfrog steps per HMC iteration.", flag="--leapfrog-steps",
               check="positive"),
        Option("max_tree_depth", int, 10, f"langevin: most doublings of a NUTS tree (2^depth - 1 leapfrog steps per "
               f"step), 1..{MAX_TREE_DEPTH}; 10 as in Stan and NumPyro.", flag="--max-tree-depth",
               bounds=(1, MAX_TREE_DEPTH)),
        Option("warmup", int, 0, "langevin: warm-up (adapting) steps of the sampler; 0: --steps in eval / diagnose, "
               "half of --steps in fit.", flag="--warmup", check="non_negative"),
        Option("step_size", float, 0.1, "langevin: initial step size.", flag="--step-size", check="positive"),
        Option("mala", bool, True, "langevin: Metropolis adjustment (default on).", flag="--mala"),
        Option("target_accept", float, 0.57, "langevin: acceptance the warm-up adapts toward, in (0, 1) (0.8 suits hmc / nuts).", flag="--target-accept",
               check="open_unit"),
        Option("chains", int, 1, "langevin: chains per sequence.", flag="--chains", check="positive"),
        Option("draws", int, 16, "langevin: kept draws per chain for bounds.", flag="--draws", check="positive"),
    ),
)
