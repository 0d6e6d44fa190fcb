"""`local`: the paper's dual-rate variational Bayes (fast per-sequence q, slow decoder step),
semi-amortized with `init = "amortized"`. Pyro in pyro.py, NumPyro in numpyro.py."""
from __future__ import annotations

from ...errors import LtmError
from ...flops import decoder_forward, encoder_forward
from ..descriptor import MethodDescriptor, Option
from ..kl_shaping import FREE_BITS, KL_WARMUP, loss_is_bound as shaped_loss_is_bound


def flops_per_token(cfg) -> float:
    """Fast steps (forward + activation-only backward; a full backward with slow_gradient
    "trajectory", whose fast steps reach the weights too), then the slow step (forward + full backward)."""
    m, inf = cfg.model, cfg.inference
    F, S = decoder_forward(m), inf.num_samples
    fast = 3 if cfg.train.slow_gradient == "trajectory" else 2
    flops = fast * F * inf.steps * S + 3 * F * S
    if inf.init == "amortized":  # the encoder's own ELBO: decoder forward, backward into the encoder
        flops += 2 * F * S + 3 * encoder_forward(m)
    return flops


def check_fit(cfg) -> None:
    """What `ltm fit` refuses for `local`: the trajectory update with the encoder's start (the
    published update has no encoder; its gradient would have to pass the refinement)."""
    if cfg.train.slow_gradient == "trajectory" and cfg.inference.init == "amortized":
        raise LtmError("train.slow_gradient = \"trajectory\" (the published update) does not train an encoder: "
                       "use it without --init amortized")


def loss_is_bound(cfg, metrics) -> bool:
    """The training loss bounds the NLL for the plain ELBO step; the trajectory update reports the
    ELBO at the eps its q was fitted to (the published reference's figure), no bound."""
    return cfg.train.slow_gradient != "trajectory" and shaped_loss_is_bound(cfg, metrics)


METHOD = MethodDescriptor(
    name="local",
    summary="per-sequence Gaussian q fitted by fast steps, slow AdamW step on the decoder",
    classes={"pyro": "ltm_ppl.inference.local.pyro:PyroLocal", "numpyro": "ltm_ppl.inference.local.numpyro:NumPyroLocal"},
    proposal="per-sequence Gaussian fitted by fast steps",
    posterior_kind="variational",
    flops_per_token=flops_per_token,
    needs_encoder=lambda cfg: cfg.inference.init == "amortized",
    # The negative ELBO per token, unless a KL warm-up or free bits shape the training objective.
    loss_is_bound=loss_is_bound,
    check_fit=check_fit,
    options=(
        # One flag, one meaning: where inference starts. local: prior, narrow, published or amortized;
        # langevin: prior, local (draws of a q fitted by --steps fast steps) or amortized.
        # A value the method does not use counts as prior (a run may be evaluated with another method).
        Option("init", str, "prior",
               "Where inference starts. local: prior (mu 0, log sigma 0), narrow (log sigma -5; formerly 'reference'), "
               "published (mu 0.01 N(0,1), log variance -5 + 0.1 N(0,1), fresh per batch) or amortized (the encoder's q); "
               "langevin: local (a q fitted by --steps fast steps) or amortized, whose draws start the chains and "
               "whose scale preconditions them.",
               flag="--init", choices=("prior", "narrow", "published", "amortized", "local"), aliases=(("reference", "narrow"),)),
        Option("fast_lr", float, 0.34, "local: fast step size (the paper's 0.34; with it the latents stay in use, docs/results.md)",
               check="positive"),
        Option("final_lr_ratio", float, 0.1, "local: fast step size at the last step, as a share of fast_lr",
               check="positive"),
        Option("optimizer", str, "adam", "local: fast optimiser (adamw: the published loop)",
               choices=("adam", "adamw", "sgd")),
        Option("fast_weight_decay", float, 0.01, "local: adamw's weight decay (torch.optim.AdamW's default, as published)",
               check="non_negative"),
        Option("scale_param", str, "log_sigma", "local: what the fast steps move: log sigma, or log variance (published)",
               choices=("log_sigma", "log_variance")),
        Option("fast_lr_denominator", str, "T-1",
               "local: cosine over step/(T-1), ending at fast_lr * final_lr_ratio, or step/T (published)",
               choices=("T-1", "T")),
        Option("fast_loss", str, "per_token",
               "local: the fast steps' loss: the negative ELBO summed over sequences and divided by the tokens per "
               "window, or summed over tokens and sequences (published; through Adam's eps it moves q differently)",
               choices=("per_token", "sum")),
        Option("fixed_noise", bool, False, "local: the fast steps reuse one eps per batch (the published loop)"),
        # Training only: the q the decoder learns from is fitted to the shaped objective (a KL term
        # in the slow step alone would do nothing: KL(q || p) does not depend on the decoder).
        KL_WARMUP, FREE_BITS,
    ),
    reference_numbers=("fixed_noise",),
    gap_against="amortized",
)
