"""`local`: the paper's dual-rate variational Bayes (fast per-sequence q, slow decoder step),
semi-amortized with `init = "amortized"`. Pyro in pyro.py, NumPyro in numpyro.py."""
from __future__ import annotations

from ...flops import decoder_forward, encoder_forward
from ..descriptor import MethodDescriptor, Option
from ..kl_shaping import FREE_BITS, KL_WARMUP, loss_is_bound


def flops_per_token(cfg) -> float:
    """Fast steps (forward + activation-only backward), then the slow step (forward + full backward)."""
    m, inf = cfg.model, cfg.inference
    F, S = decoder_forward(m), inf.num_samples
    flops = 2 * F * inf.steps * S + 3 * F * S
    if inf.init == "amortized":  # the encoder's own ELBO: decoder forward, backward into the encoder
        flops += 2 * F * S + 3 * encoder_forward(m)
    return flops


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
        Option("fixed_noise", bool, False, "local: the fast steps reuse one eps per batch (the published loop)"),
        # Internal: the reported ELBO at that same eps, the reference's per-sequence figure (not a
        # bound); set only on `ltm eval --fixed-noise`'s labelled row.
        Option("report_fixed_noise", bool, False, "local (internal): report the ELBO at the fixed eps; eval --fixed-noise only"),
        # Training only: the q the decoder learns from is fitted to the shaped objective (a KL term
        # in the slow step alone would do nothing: KL(q || p) does not depend on the decoder).
        KL_WARMUP, FREE_BITS,
    ),
    reference_numbers=("fixed_noise",),
    gap_against="amortized",
)
