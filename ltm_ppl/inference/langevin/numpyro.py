"""`langevin` in NumPyro: MCMC on log p(x, z) per sequence and chain (kernel `mala`: the sampler
below; `hmc` and `nuts`: blackjax, blackjax_kernels.py), then one slow step on the decoder at the
last state (Monte Carlo EM); the mirror of pyro.py.

Chains may start at draws of a fitted q (init "local": the local method's fast loop; "amortized":
the encoder) and are then run in its standardised coordinates u = (z - loc) / scale: q's scale
is the diagonal preconditioner (mass matrix) of every kernel, and the prior start is u = z.

The sampler (`langevin_sample`) is a plain function over a log-joint function, so it runs on any
model (tests check it on a linear-Gaussian posterior). It is not an `MCMCKernel`: NumPyro's MCMC
runner and its kernels accept or reject the whole state at once and adapt one step size for it,
while here every (chain, sequence) pair accepts, rejects and adapts its own step size; and the
chain loop must sit inside the jitted training step, which `MCMC.run` (a host-side driver) cannot.
Chains are a batch dimension: z is [C, B, *event], every quantity of a step is [C, B], the whole
loop is one `lax.scan`, and the decoder sees C * B sequences at once.

The target is the unscaled joint of the batch's sequences, read through NumPyro (numpyro_elbo.
log_joint: the model traced with z substituted, each site's log_prob without the plate's
subsample scale).

Nothing here imports torch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import LtmError
from ...models.jax import encoder as jax_encoder
from ...noise import FastNoise
from ..gaussian import fit_to_draws
from ..local.fast_fit import FastFit
from ..local.numpyro import fast_lrs, fit_local_posterior
from ..numpyro_backend import NumPyroBackend
from ..numpyro_elbo import log_joint_terms
from ..numpyro_programs import Programs
from ..weights import TOO_FEW_DRAWS
from . import blackjax_kernels, training_schedule

ADAPT_RATE = 2.0  # log s += ADAPT_RATE * (alpha - target) / sqrt(t + 1) during warm-up


def _value_and_grad(logp_fn, z):
    """lp [C, B] and d lp / dz (per sequence: the sequences do not interact)."""
    lp, vjp = jax.vjp(logp_fn, z)
    (grad,) = vjp(jnp.ones_like(lp))
    return lp, grad


def langevin_sample(logp_fn, z0, key=None, *, warmup: int, draws: int, step_size, mala: bool = True,
                    target_accept: float = 0.57, keep_z: bool = True, noise=None):
    """Run `warmup` adapting steps, then `draws` kept steps, of (Metropolis-adjusted) Langevin.

    logp_fn(z) -> log p [C, B] for z [C, B, *event]; z0 the start; step_size a float or [C, B].
    One step at z (log p = lp, gradient g): mean_f = z + s^2/2 g, z' = mean_f + s eps;
    log alpha = lp' - lp - |z - mean_b|^2 / 2s^2 + |z' - mean_f|^2 / 2s^2 with mean_b = z' + s^2/2 g';
    MALA accepts where log u < log alpha (alpha = min(1, exp log alpha), 0 where log alpha is NaN);
    plain Langevin always moves (alpha = 1). During warm-up only, and only with MALA,
    log s += 2 (alpha - target_accept) / sqrt(t + 1) after step t. Randomness from `key`, or
    injected: noise = (eps [warmup + draws, C, B, *event], log_u [warmup + draws, C, B]).

    Returns a dict: "z", "log_joint", "step_size" of the final state ([C, B, *event], [C, B],
    [C, B]); "warmup_accept" [W, C, B]; "accept" and "draw_log_joint" [D, C, B]; "draws"
    [D, C, B, *event] when keep_z. Pure: call it under jit.
    """
    z0 = jnp.asarray(z0, jnp.float32)
    lp0, g0 = _value_and_grad(logp_fn, z0)
    batch_shape = lp0.shape
    event_axes = tuple(range(len(batch_shape), z0.ndim))
    expand = lambda a: a.reshape(a.shape + (1,) * len(event_axes))  # noqa: E731
    log_s0 = jnp.broadcast_to(jnp.log(jnp.asarray(step_size, jnp.float32)), batch_shape)
    total = warmup + draws
    # Each step's randomness: drawn inside the loop from its own key, or injected.
    if noise is None:  # warm-up and kept steps from separate keys: the warm-up is the same whatever `draws`
        keys = jnp.concatenate([jax.random.split(jax.random.fold_in(key, 0), warmup),
                                jax.random.split(jax.random.fold_in(key, 1), draws)])
        xs = (keys, None, None)
    else:
        xs = (None, *(jnp.asarray(a, jnp.float32) for a in noise))

    def randomness(k, eps, log_u):
        if eps is None:
            eps = jax.random.normal(jax.random.fold_in(k, 0), z0.shape, jnp.float32)
            log_u = jnp.log(jax.random.uniform(jax.random.fold_in(k, 1), batch_shape, jnp.float32))
        return eps, log_u

    def step(state, eps, log_u):
        z, lp, g, log_s = state
        s2 = jnp.exp(2 * log_s)  # [C, B]
        mean_f = z + 0.5 * expand(s2) * g
        proposal = mean_f + expand(jnp.exp(log_s)) * eps
        lp_new, g_new = _value_and_grad(logp_fn, proposal)
        if mala:
            mean_b = proposal + 0.5 * expand(s2) * g_new
            backward = ((z - mean_b) ** 2).sum(event_axes)
            forward = ((proposal - mean_f) ** 2).sum(event_axes)
            log_alpha = lp_new - lp - backward / (2 * s2) + forward / (2 * s2)
            alpha = jnp.where(jnp.isnan(log_alpha), 0.0, jnp.exp(jnp.minimum(log_alpha, 0.0)))
            accept = log_u < log_alpha
        else:
            alpha = jnp.ones(batch_shape, jnp.float32)
            accept = jnp.ones(batch_shape, bool)
        z = jnp.where(expand(accept), proposal, z)
        g = jnp.where(expand(accept), g_new, g)
        lp = jnp.where(accept, lp_new, lp)
        return (z, lp, g, log_s), alpha

    def warm_body(state, xs):
        t, k, eps, log_u = xs
        state, alpha = step(state, *randomness(k, eps, log_u))
        if mala:
            z, lp, g, log_s = state
            state = (z, lp, g, log_s + ADAPT_RATE * (alpha - target_accept) / jnp.sqrt(t + 1.0))
        return state, alpha

    def draw_body(state, xs):
        state, alpha = step(state, *randomness(*xs))
        out = {"accept": alpha, "draw_log_joint": state[1]}
        if keep_z:
            out["draws"] = state[0]
        return state, out

    head = jax.tree.map(lambda a: a[:warmup], xs)
    tail = jax.tree.map(lambda a: a[warmup:], xs)
    state = (z0, lp0, g0, log_s0)
    state, warm_alpha = jax.lax.scan(warm_body, state, (jnp.arange(warmup, dtype=jnp.float32), *head))
    state, kept = jax.lax.scan(draw_body, state, tail)
    z, lp, _, log_s = state
    return {"z": z, "log_joint": lp, "step_size": jnp.exp(log_s), "warmup_accept": warm_alpha, **kept}


class LangevinPrograms(Programs):
    def build(self):
        self.step = jax.jit(self._step, donate_argnums=self.donate)

    def terms(self, params, tokens, z):
        """(log p(z), log p(x | z)) [C, B] at z [C, B, n_z, d], unscaled."""
        return log_joint_terms(self.model(params), (tokens,), z, **self.sites)

    def start(self, params, tokens, key, fit_steps: int):
        """(loc, scale) [B, *event] of the q whose draws start the chains and whose scale
        preconditions them: the prior, a local q fitted by fit_steps fast steps, or the encoder's."""
        B = tokens.shape[0]
        init = self.inf.init
        if init == "local" and fit_steps > 0:
            lrs = jnp.asarray(fast_lrs(fit_steps, self.inf))
            loc, log_scale = fit_local_posterior(self.model(params), tokens, self.shape, self.inf, lrs,
                                                 FastFit(FastNoise.fresh(key)))
            return loc, jnp.exp(log_scale)
        if init == "amortized":
            loc, log_scale = jax_encoder.encode(params, self.model_cfg, tokens, self.dtype)
            return loc.astype(jnp.float32), jnp.exp(log_scale.astype(jnp.float32))
        return jnp.zeros((B, *self.shape), jnp.float32), jnp.ones((B, *self.shape), jnp.float32)

    def sample(self, params, tokens, key, fast_noise, fit_steps: int, warmup: int, draws: int, chains: int, keep_z: bool):
        """The chains of every sequence, with the decoder's parameters as constants: z [C, D, B,
        n_z, d] the kept draws (when keep_z), log_joint and accept_prob [C, D, B], step_size [C, B],
        last [C, B, n_z, d], warmup_accept_prob [C, W, B], gradient_evaluations [C, B]; HMC / NUTS
        add energy, diverging, n_steps (and NUTS tree_depth) [C, D, B]. fast_noise = (u0, eps,
        log_u) fixes all the randomness of MALA (u0 = z0 from the prior start)."""
        params = jax.lax.stop_gradient(params)
        start_key, init_key, chain_key = jax.random.split(key, 3)
        loc, scale = self.start(params, tokens, start_key, fit_steps)
        loc, scale = jax.lax.stop_gradient(loc), jax.lax.stop_gradient(scale)
        u0 = jax.random.normal(init_key, (chains, tokens.shape[0], *self.shape), jnp.float32)
        if fast_noise is not None:
            u0, fast_noise = fast_noise[0], fast_noise[1:]
        inf = self.inf
        to_z = lambda u: loc + scale * u  # noqa: E731  (broadcasts over leading chain / draw dims)
        if inf.kernel == "mala":
            logp = lambda u: sum(self.terms(params, tokens, to_z(u)))  # noqa: E731
            out = langevin_sample(logp, u0, chain_key, warmup=warmup, draws=draws, step_size=inf.step_size, mala=inf.mala,
                                  target_accept=inf.target_accept, keep_z=keep_z, noise=fast_noise)
            evaluations = jnp.full(out["log_joint"].shape, 1 + warmup + draws, jnp.int32)
        else:
            def logp_pair(pair, u):  # one sequence: its tokens, q's loc and scale, its latent u
                tokens_b, loc_b, scale_b = pair
                return sum(self.terms(params, tokens_b[None], (loc_b + scale_b * u)[None, None]))[0, 0]

            settings = blackjax_kernels.SamplerSettings(
                kernel=inf.kernel, warmup=warmup, draws=draws, step_size=inf.step_size, target_accept=inf.target_accept,
                leapfrog_steps=inf.leapfrog_steps, max_tree_depth=inf.max_tree_depth, keep_z=keep_z,
                schedule="map" if inf.kernel == "nuts" else "vmap")  # NUTS: each pair pays for its own tree only
            out = blackjax_kernels.sample_pairs(logp_pair, (tokens, loc, scale), u0, chain_key, settings)
            evaluations = 1 + out["warmup_n_steps"] + out["n_steps"].sum(0)
        swap = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731  the scans' [D, C, ...] -> [C, D, ...]
        run = {"log_joint": swap(out["draw_log_joint"]), "accept_prob": swap(out["accept"]), "step_size": out["step_size"],
               "last": to_z(out["z"]), "warmup_accept_prob": swap(out["warmup_accept"]),
               "gradient_evaluations": evaluations}
        for name in ("energy", "diverging", "n_steps", "tree_depth"):
            if name in out:
                run[name] = swap(out[name])
        if keep_z:
            run["z"] = to_z(swap(out["draws"]))
        return run

    def chains(self, params, tokens, key, fast_noise, warmup, draws, chains, keep_z):
        """The hook: `warmup` is the interface's inner steps: the warm-up (unless inference.warmup
        sets it) and the fast steps of a local start."""
        return self.sample(params, tokens, key, fast_noise, warmup, self.inf.warmup or warmup, draws, chains, keep_z)

    def _step(self, params, opt_state, tokens, key, lr):
        W, kept = training_schedule(self.inf)
        run = self.sample(params, tokens, key, None, self.inf.steps, W, kept, self.inf.chains, False)
        z = jax.lax.stop_gradient(run["last"])
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)

        def loss_fn(p):  # Monte Carlo EM: log p(x | z_K), averaged over chains
            log_prior, loglik = self.terms(p, tokens, z)
            return -loglik.mean(0).sum() / n_tokens, log_prior

        (loss, log_prior), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params, opt_state, guard = self.update(params, opt_state, grads, lr, loss)
        accept = run["accept_prob"] if kept > 0 else run["warmup_accept_prob"]
        metrics = {"loss": loss, "nll": loss, "log_prior": log_prior.mean(), "accept": accept.mean(),
                   "step_size": run["step_size"].mean()} | guard
        return params, opt_state, metrics

    def proposal(self, params, tokens, key, fast_noise, fit, static):
        """The q of its bounds: the diagonal Gaussian per sequence fitted to its chains' kept draws;
        static = (warmup, draws, chains)."""
        warmup, draws, chains = static
        z = self.chains(params, tokens, key, fast_noise, warmup, draws, chains, True)["z"]  # [C, D, B, n_z, d]
        loc, log_scale = fit_to_draws(z.reshape(-1, *z.shape[2:]), jnp)
        return loc, log_scale, None


class NumPyroLangevin(NumPyroBackend):
    method = "langevin"
    posterior_kind = "chains"  # draws from Markov chains: R-hat and ESS apply
    programs_class = LangevinPrograms

    def step(self, batch: np.ndarray) -> dict:
        lr = self.slow_lr()
        self.params, self.opt_state, out = self.programs.step(
            self.params, self.opt_state, self.tensor(batch), self.next_key(), np.float32(lr)
        )
        return self.finish_step(out, lr)

    def fit_args(self, steps: int):
        """The proposal's chains: `steps` inner steps (warm-up unless inference.warmup is set, and a
        local start's fast steps), then cfg.inference.draws kept steps of cfg.inference.chains
        chains. Its fast_noise is (z0 [C, B, n_z, d], eps [W + draws, C, B, n_z, d], log_u
        [W + draws, C, B]), MALA only."""
        inf = self.cfg.inference
        if inf.chains * inf.draws < 2:
            raise LtmError(TOO_FEW_DRAWS)
        return None, (steps, inf.draws, inf.chains)
