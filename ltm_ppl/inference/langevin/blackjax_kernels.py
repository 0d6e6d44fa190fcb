"""HMC and NUTS from blackjax, one independent sampler per (chain, sequence) pair (NumPyro backend).

Each pair is its own blackjax state on its own log density (one sequence's latent, that
sequence's data): one pair's rejection, step size or mass matrix never touches another's. Two
schedules run the same per-pair computation (same keys, same draws up to float rounding): "vmap" runs the pairs side by
side, so the decoder sees all C * B sequences at once, which suits HMC's fixed trajectory length;
"map" runs them one after another (`jax.lax.map`), which suits NUTS: under vmap its tree-building
loop runs until the deepest of the C * B trees is done, so every pair pays for the deepest tree
(measured: 50 + 50 NUTS steps of 32 pairs did not finish in 600 s), while mapped each pair pays
for its own (on CPU at the same cost per gradient: ~12 ms per pair either way on the pinned run).
NUTS trees are capped at `max_tree_depth` doublings (2^depth - 1 leapfrog steps).
Warm-up is blackjax's Stan-style `window_adaptation` (dual-averaging step size, diagonal inverse
mass matrix) and runs during the first `warmup` steps only; the kept draws use the adapted
parameters unchanged (adapting while sampling would break stationarity). A warm-up shorter than
MIN_ADAPT_WARMUP only burns in at the given step size.

Nothing here imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import blackjax
import jax
import jax.numpy as jnp

from . import MIN_ADAPT_WARMUP


def _algorithm(kernel: str):
    return {"hmc": blackjax.hmc, "nuts": blackjax.nuts}[kernel]


def _extra(kernel: str, leapfrog_steps: int, max_tree_depth: int) -> dict:
    return {"num_integration_steps": leapfrog_steps} if kernel == "hmc" else {"max_num_doublings": max_tree_depth}


SCHEDULES = ("vmap", "map")
KERNELS = ("hmc", "nuts")


@dataclass(frozen=True)
class SamplerSettings:
    """How sample_pairs runs each (chain, sequence) pair: the same for every pair."""
    kernel: str  # "hmc" or "nuts"
    warmup: int  # adapting steps (fewer than MIN_ADAPT_WARMUP: burn-in at step_size)
    draws: int  # kept steps
    step_size: float  # where adaptation starts, or the step of a short burn-in
    target_accept: float  # the acceptance rate the warm-up adapts toward
    leapfrog_steps: int  # HMC's steps per trajectory
    max_tree_depth: int = 10  # NUTS's most doublings per tree
    schedule: str = "vmap"  # "vmap" (pairs side by side) or "map" (one pair after another)
    keep_z: bool = True  # return every kept draw

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")


def sample_pairs(logp_pair, data, u0, key, settings: SamplerSettings) -> dict:
    """Run every (chain, sequence) pair: settings.warmup adapting steps, then settings.draws kept steps.

    logp_pair(data_b, u) -> scalar: the log density of one sequence's latent u [*event] given that
    sequence's data data_b (data[b]); u0 [C, B, *event] the starts. Returns, in the layout of the
    MALA sampler: "z" the last state [C, B, *event], "log_joint" [C, B], "step_size" [C, B],
    "warmup_accept" [W, C, B]; and per kept draw [D, C, B]: "accept", "draw_log_joint", "energy",
    "diverging", "n_steps" (gradient evaluations), "tree_depth" (NUTS only), "draws" [D, C, B,
    *event] when keep_z; "warmup_n_steps" [C, B] the gradient evaluations of warm-up.
    settings.schedule: "vmap" (pairs side by side) or "map" (one pair after another); the draws are the same.
    """
    kernel, warmup, draws, step_size = settings.kernel, settings.warmup, settings.draws, settings.step_size
    algorithm, extra = _algorithm(kernel), _extra(kernel, settings.leapfrog_steps, settings.max_tree_depth)
    event = u0.shape[2:]
    size = 1
    for n in event:
        size *= n

    def one_pair(pair_key, data_b, start):
        logp = lambda flat: logp_pair(data_b, flat.reshape(event))  # noqa: E731
        warm_key, draw_key = jax.random.split(pair_key)
        position = start.reshape(-1)
        if warmup >= MIN_ADAPT_WARMUP:
            adapt = blackjax.window_adaptation(algorithm, logp, is_mass_matrix_diagonal=True, initial_step_size=step_size,
                                               target_acceptance_rate=settings.target_accept, **extra)
            (state, params), info = adapt.run(warm_key, position, num_steps=warmup)
            warm_accept = info.info.acceptance_rate
            warm_steps = info.info.num_integration_steps.sum()
        else:  # too short to adapt (MIN_ADAPT_WARMUP): burn in at the given step size
            params = {"step_size": jnp.asarray(step_size, jnp.float32), "inverse_mass_matrix": jnp.ones(size)}
            fixed = algorithm(logp, params["step_size"], params["inverse_mass_matrix"], **extra)

            def burn(state, k):
                state, info = fixed.step(k, state)
                return state, (info.acceptance_rate, info.num_integration_steps)

            state, (warm_accept, warm_steps) = jax.lax.scan(burn, fixed.init(position), jax.random.split(warm_key, warmup))
            warm_steps = warm_steps.sum()
        sampler = algorithm(logp, params["step_size"], params["inverse_mass_matrix"], **extra)

        def body(state, k):
            state, info = sampler.step(k, state)
            out = {"accept": info.acceptance_rate, "draw_log_joint": state.logdensity, "energy": info.energy,
                   "diverging": info.is_divergent, "n_steps": info.num_integration_steps}
            if kernel == "nuts":
                out["tree_depth"] = info.num_trajectory_expansions
            if settings.keep_z:
                out["draws"] = state.position.reshape(event)
            return state, out

        state, kept = jax.lax.scan(body, state, jax.random.split(draw_key, draws))
        return {"z": state.position.reshape(event), "log_joint": state.logdensity, "step_size": params["step_size"],
                "warmup_accept": warm_accept, "warmup_n_steps": warm_steps, **kept}

    C, B = u0.shape[:2]
    keys = jax.random.split(key, C * B)  # pair (c, b) gets keys[c * B + b] under either schedule
    if settings.schedule == "vmap":
        keys = keys.reshape(C, B, *keys.shape[1:])
        per_sequence = jax.vmap(one_pair, in_axes=(0, 0, 0))  # over B
        out = jax.vmap(per_sequence, in_axes=(0, None, 0))(keys, data, u0)  # over C
    else:  # every pair its own loop: the C * B pairs flattened chain-major, each with its sequence's data
        pair_data = jax.tree.map(lambda a: jnp.broadcast_to(a[None], (C, *a.shape)).reshape(C * B, *a.shape[1:]), data)
        flat = jax.lax.map(lambda xs: one_pair(*xs), (keys, pair_data, u0.reshape(C * B, *event)))
        out = jax.tree.map(lambda a: a.reshape(C, B, *a.shape[1:]), flat)
    # per-draw arrays come out [C, B, D]: to the scans' [D, C, B] layout of the MALA sampler
    for name in ("accept", "draw_log_joint", "energy", "diverging", "n_steps", "tree_depth", "warmup_accept"):
        if name in out:
            out[name] = jnp.moveaxis(out[name], 2, 0)
    if "draws" in out:
        out["draws"] = jnp.moveaxis(out["draws"], 2, 0)
    return out
