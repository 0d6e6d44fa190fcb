"""What the rest of the code knows about an inference method, without importing torch or jax.

A `MethodDescriptor` is the one place a method states its options (config field, flag, help,
type, range), its training FLOPs per token, the label of its proposal q, whether its training
loss bounds the NLL, whether it needs a latent decoder or an encoder, its posterior kind, which
reference numbers apply to it, and where its class lives in each backend. The CLI builds the
method flags from the options, `config.validate` checks them, and nothing outside inference/
branches on a method's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# Range checks an option may ask for (config.validate applies them, naming field and flag).
CHECKS = ("positive", "non_negative", "open_unit")


@dataclass(frozen=True)
class Option:
    """One setting of a method: an [inference] field in the config, and its flag when it has one."""

    field: str  # InferenceConfig field, e.g. "step_size"
    type: type  # int, float, str or bool
    default: object
    help: str
    flag: str | None = None  # e.g. "--step-size"; None: set in the TOML only. A bool gets --x/--no-x.
    choices: tuple[str, ...] | None = None
    check: str | None = None  # one of CHECKS
    bounds: tuple | None = None  # (lowest, highest) allowed, both included: "must be in lowest..highest"
    aliases: tuple[tuple[str, str], ...] = ()  # (old value, current value): renamed choices still load

    def __post_init__(self):
        if self.check is not None and self.check not in CHECKS:
            raise ValueError(f"option {self.field}: unknown check {self.check!r}")


def _never(cfg, metrics) -> bool:
    return False


def _no_encoder(cfg) -> bool:
    return False


def _fits_anything(cfg) -> None:
    return None


@dataclass(frozen=True)
class MethodDescriptor:
    name: str
    summary: str  # one line, for help texts
    classes: dict[str, str]  # backend -> "module:Class", imported only when used
    proposal: str  # the q behind its reported ELBO, stated beside every number
    # "variational": independent draws from q (PSIS k-hat applies); "chains": Markov chain states
    # (R-hat and ESS apply); None: no latent.
    posterior_kind: str | None
    flops_per_token: Callable  # cfg -> FLOPs of one training iteration per training token
    latent: bool = True  # does the decoder read latents (cross-attention, a "z" site)? False: its
    # reported number is the exact log-likelihood, not a bound
    inner_steps: bool = True  # does its reported q take `steps` inner steps (fast steps, chain steps)?
    needs_encoder: Callable = _no_encoder  # cfg -> does the method use the amortized encoder?
    loss_is_bound: Callable = _never  # (cfg, step metrics) -> does exp(loss) bound the perplexity?
    options: tuple[Option, ...] = ()
    # cfg -> None, or raises LtmError: settings `ltm fit` refuses for this method (eval may take them)
    check_fit: Callable = _fits_anything
    reference_numbers: tuple[str, ...] = ()  # e.g. "fixed_noise": the published reference's evaluation
    # diagnose: the method whose ELBO this one's is compared with, as the amortization gap
    gap_against: str | None = None
