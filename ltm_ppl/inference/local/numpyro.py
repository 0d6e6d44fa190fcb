"""`local` in NumPyro: the paper's dual-rate variational Bayes, the mirror of pyro.py.

Fast: per-sequence q_i = N(mu_i, diag sigma_i^2) fitted by T steps of Adam (AdamW, SGD) on the ELBO,
cosine-decayed step size (passed into the loop as an array), fresh noise at every step,
gradients w.r.t. (mu, log sigma) only, so the decoder computes no weight gradients; the whole
loop is one `lax.scan` under `jax.jit`.
Slow: one AdamW step on the decoder at the fitted q_i with fresh noise; the fast loop, the slow
gradient and the optimiser update are one compiled program per (steps, shapes). With
train.slow_gradient "trajectory" (the published update) the fast loop uses one eps and also
differentiates each step's loss w.r.t. the decoder's parameters; the slow gradient is the sum of
those plus the cross-entropy's at the final z = mu + sigma eps (same eps), clipped, then AdamW.
Semi-amortized (`init = "amortized"`): the fast steps start from the encoder's q (a constant for
them); the encoder learns from its own ELBO at its output (decoder held constant for that term,
no backpropagation through the refinement), the decoder from the refined q; one AdamW over both.

Nothing here imports torch.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ...models.jax import encoder as jax_encoder
from ...models.jax.program import local_guide
from ..numpyro_backend import NumPyroBackend
from ..numpyro_elbo import elbo_terms
from ..numpyro_programs import Programs
from ..gaussian import FAST_ADAM_EPS, FAST_BETA1, FAST_BETA2, published_start, shaped_kl
from ..kl_shaping import shaping_on
from ..schedules import fast_loss_divisor, fast_lr, kl_shape
from ...noise import INIT, SLOW, FastNoise, jax_eps
from .fast_fit import FastFit


def fast_lrs(steps: int, inf_cfg) -> np.ndarray:
    """The fast step sizes of one inner loop (schedules.fast_lr), as a float32 array."""
    return np.asarray([fast_lr(t, steps, inf_cfg.fast_lr, inf_cfg.final_lr_ratio, inf_cfg.fast_lr_denominator)
                       for t in range(steps)], np.float32)


def initial_local(B, shape, inf_cfg, key):
    """(loc, log_scale) where the fast steps begin without an encoder: a fixed point, or the
    published random start (mu 0.01 N(0,1), log variance -5 + 0.1 N(0,1), fresh per key)."""
    if inf_cfg.init == "published" and key is not None:  # keyed per sequence (noise.py)
        draw = jax_eps(key, INIT, jnp.arange(B), shape, 2)
        return published_start(draw[0], draw[1])
    if inf_cfg.init == "published":
        loc_key, var_key = jax.random.split(jax.random.fold_in(key, 7))
        return published_start(jax.random.normal(loc_key, (B, *shape), jnp.float32),
                               jax.random.normal(var_key, (B, *shape), jnp.float32))
    return jnp.zeros((B, *shape), jnp.float32), jnp.full((B, *shape), inf_cfg.init_log_scale, jnp.float32)


def fast_optimizer(inf_cfg):
    """The update direction u (the step is -lr u): optax's mirror of torch's Adam, AdamW
    (decoupled weight decay: u = adam + wd p, as torch's p(1 - lr wd) - lr adam) or SGD."""
    if inf_cfg.optimizer == "sgd":
        return optax.identity()
    adam = optax.scale_by_adam(b1=FAST_BETA1, b2=FAST_BETA2, eps=FAST_ADAM_EPS)
    if inf_cfg.optimizer == "adamw":
        return optax.chain(adam, optax.add_decayed_weights(inf_cfg.fast_weight_decay))
    return adam


def fit_local_posterior(model, tokens, shape, inf_cfg, lrs, fit: FastFit, params=None):
    """Fit (loc, log_scale) of shape [B, *shape] by len(lrs) fast steps; model(tokens) is the joint.

    Starts at fit.start = (loc, log_scale) when given (semi-amortized: the encoder's q), else at
    initial_local (inf_cfg.init, drawn from fit.noise.key for the published start). The steps move
    (loc, log sigma), or (loc, log variance) with inf_cfg.scale_param = "log_variance".

    Minimises the negative ELBO summed over sequences (each sequence's parameters see only their
    own term), per predicted token or summed over tokens too (inf_cfg.fast_loss), differentiating
    w.r.t. (loc, scale parameter) only; with fit.train_decoder (the trajectory update), model is a
    function params -> model, `params` the decoder's weights, and each step's gradient w.r.t.
    params is summed too and returned third. fit.noise (noise.FastNoise) gives each step's eps:
    per_step [steps, S, B, *shape] (backend parity tests), or fixed [S, B, *shape] reused at every
    step (the published reference's mode and the trajectory update), else fresh draws from its
    key, keyed per sequence (noise.jax_eps: step, global row); there is no stream to fall back on.
    fit.kl_shaping = (beta, free bits) replaces the KL term by shaped_kl's (training iterations
    only, never a reported bound). Pure: call it under jit.
    """
    fit.refuse_pyro_only()
    if fit.train_decoder != (params is not None):
        raise ValueError("fit_local_posterior: the decoder's weights (params) come with FastFit(train_decoder=True) and only then")
    noise, start, kl_shaping = fit.noise, fit.start, fit.kl_shaping
    if noise.source == "stream":
        raise ValueError("the JAX fast loop has no random stream of its own: give FastNoise a key or the eps")
    key, fixed_eps = noise.key, noise.fixed
    if start is None and inf_cfg.init == "published" and key is None:
        raise ValueError("the published start is drawn from FastNoise's key: give the eps a key too")
    B = tokens.shape[0]
    if start is None:
        loc, log_scale = initial_local(B, shape, inf_cfg, key)
    else:
        loc, log_scale = (jax.lax.stop_gradient(jnp.asarray(t, jnp.float32)) for t in start)
    factor = 2.0 if inf_cfg.scale_param == "log_variance" else 1.0  # log variance = 2 log sigma
    opt = fast_optimizer(inf_cfg)
    n_tokens = fast_loss_divisor(inf_cfg, tokens.shape[-1])

    def loss(local, eps, rng, weights=None):
        loc, scale_param = local
        log_scale = scale_param / factor
        guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
        value = None if eps is None else loc + jnp.exp(log_scale) * eps
        particles = inf_cfg.num_samples if eps is None else eps.shape[0]
        joint = model if weights is None else model(weights)
        loglik, kl = elbo_terms(joint, guide, tokens, num_particles=particles, latent_value=value, rng_key=rng)
        if kl_shaping is not None:
            kl = shaped_kl(loc, log_scale, *kl_shaping, jnp)
        return -(loglik.mean(0) - kl).sum() / n_tokens

    rows = jnp.arange(B)  # global row indices: on a sharded batch each device draws its own rows' eps

    def body(carry, xs):
        local, state, summed = carry
        lr, step_eps, t = xs
        if step_eps is None and fixed_eps is None:  # the one eps-draw site of the fast loop
            step_eps = jax_eps(key, t, rows, shape, inf_cfg.num_samples)
        step_eps = fixed_eps if step_eps is None else step_eps
        if params is None:
            grads = jax.grad(loss)(local, step_eps, None)
        else:  # the decoder's gradient at this fast iterate, added to the running sum
            grads, weight_grads = jax.grad(loss, argnums=(0, 3))(local, step_eps, None, params)
            summed = jax.tree.map(jnp.add, summed, weight_grads)
        updates, state = opt.update(grads, state, local)
        local = jax.tree.map(lambda p, u: p - lr * u, local, updates)
        return (local, state, summed), None

    steps = lrs.shape[0]
    local = (loc, factor * log_scale)
    summed = None if params is None else jax.tree.map(jnp.zeros_like, params)
    (local, _, summed), _ = jax.lax.scan(body, (local, opt.init(local), summed), (lrs, noise.per_step, jnp.arange(steps)))
    if params is None:
        return local[0], local[1] / factor
    return local[0], local[1] / factor, summed


class LocalPrograms(Programs):
    """The compiled programs of `local` for one setting (numpyro_programs.programs_for)."""

    def build(self):
        self.semi_amortized = self.inf.init == "amortized"
        self.shaped = shaping_on(self.inf)  # a KL warm-up or free bits in the training objective
        self.trajectory = self.train.slow_gradient == "trajectory"
        self.step = jax.jit(self._trajectory_step if self.trajectory else self._step, donate_argnums=self.donate)

    def start(self, params, tokens):
        """Where the fast steps begin: the encoder's q (semi-amortized), else the configured point."""
        if not self.semi_amortized:
            return None
        return jax.lax.stop_gradient(jax_encoder.encode(params, self.model_cfg, tokens, self.dtype))

    def fit(self, params, tokens, lrs, key, fast_noise=None, kl_shaping=None):
        """(loc, log_scale, fixed eps or None) fitted with the decoder's parameters as constants."""
        fixed_key, fit_key = jax.random.split(key)
        fixed = None
        if self.inf.fixed_noise:
            fixed = jax.random.normal(fixed_key, (self.inf.num_samples, tokens.shape[0], *self.shape), jnp.float32)
        params = jax.lax.stop_gradient(params)
        loc, log_scale = fit_local_posterior(
            self.model(params), tokens, self.shape, self.inf, lrs,
            FastFit(FastNoise(key=fit_key, fixed=fixed if fast_noise is None else None, per_step=fast_noise),  # per_step wins
                    self.start(params, tokens), kl_shaping),
        )
        return loc, log_scale, fixed

    def proposal(self, params, tokens, key, fast_noise, lrs, static=None):
        """q fitted by len(lrs) fast steps: (loc, log_scale, eps). With inference.fixed_noise the
        fast steps reuse one eps; the reported estimate reuses it (eps not None) only on eval
        --fixed-noise's labelled row (bound's at_fast_noise): the reference's number."""
        return self.fit(params, tokens, lrs, key, fast_noise)

    def _trajectory_step(self, params, opt_state, tokens, lrs, key, lr, beta=1.0):
        """train.slow_gradient "trajectory" (pyro.py's trajectory_step): one eps for the fast loop,
        whose every step's gradient w.r.t. the decoder is summed; plus the mean cross-entropy's at
        the final z = mu + sigma eps with that eps; then the clipped AdamW step."""
        fixed_key, fit_key = jax.random.split(key)
        shaping = (beta, self.inf.free_bits) if self.shaped else None
        eps = jax.random.normal(fixed_key, (self.inf.num_samples, tokens.shape[0], *self.shape), jnp.float32)
        total, out, grads = self.trajectory_gradient(params, tokens, lrs, eps, key=fit_key, shaping=shaping)
        params, opt_state, guard = self.update(params, opt_state, grads, lr, total)  # clipped there
        return params, opt_state, out | guard

    def trajectory_gradient(self, params, tokens, lrs, eps, start=None, key=None, shaping=None):
        """(loss, metrics, the decoder's unclipped gradient) of the trajectory update with the fast
        loop's one eps [S, B, *event] given, from `start` (else initial_local from key)."""
        loc, log_scale, summed = fit_local_posterior(
            lambda p: self.model(p), tokens, self.shape, self.inf, lrs,
            FastFit(FastNoise.reused(eps, key), start, shaping, train_decoder=True), params)
        loc, log_scale = jax.lax.stop_gradient(loc), jax.lax.stop_gradient(log_scale)
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)

        def loss_fn(p):
            loglik, kl = self.elbo(p, tokens, loc, log_scale, eps.shape[0], eps, None)
            nll = -loglik.mean(0).sum() / n_tokens  # the published last_loss: mean cross-entropy at z
            loss = nll + kl.sum() / n_tokens  # (its KL term is constant in the decoder)
            return loss, {"loss": loss, "nll": nll, "kl": kl.mean()}

        (total, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return total, out, jax.tree.map(jnp.add, grads, summed)

    def _step(self, params, opt_state, tokens, lrs, key, lr, beta=1.0):
        fit_key, slow_key = jax.random.split(key)
        encoder_key = jax.random.fold_in(key, 2)
        shaping = (beta, self.inf.free_bits) if self.shaped else None  # beta: the KL warm-up's weight now
        loc, log_scale, _ = self.fit(params, tokens, lrs, fit_key, kl_shaping=shaping)
        loc, log_scale = jax.lax.stop_gradient(loc), jax.lax.stop_gradient(log_scale)
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
        S = self.inf.num_samples

        slow_eps = jax_eps(slow_key, SLOW, jnp.arange(tokens.shape[0]), self.shape, S)

        def loss_fn(p):
            loglik, kl = self.elbo(p, tokens, loc, log_scale, S, slow_eps, slow_key)
            nll = -loglik.mean(0).sum() / n_tokens
            loss = nll + kl.sum() / n_tokens
            if shaping is not None:  # the shaped training loss (its KL term is constant in the decoder)
                loss = nll + shaped_kl(loc, log_scale, *shaping, jnp).sum() / n_tokens
            aux = {"loss": loss, "nll": nll, "kl": kl.mean()}
            if not self.semi_amortized:
                return loss, aux
            # The encoder's own ELBO at its output, with the decoder held constant for this term.
            frozen = {k: v if k.startswith(jax_encoder.PREFIX) else jax.lax.stop_gradient(v) for k, v in p.items()}
            enc_loglik, enc_kl = self.encoder_elbo(frozen, tokens, S, encoder_key)
            aux["encoder_loss"] = -(enc_loglik.mean(0) - enc_kl).sum() / n_tokens
            return loss + aux["encoder_loss"], aux

        (total, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params, opt_state, guard = self.update(params, opt_state, grads, lr, total)
        return params, opt_state, out | guard


class NumPyroLocal(NumPyroBackend):
    method = "local"
    posterior_kind = "variational"  # independent draws from q: PSIS k-hat applies
    programs_class = LocalPrograms

    def lrs(self, steps: int):
        """The fast step sizes on the device, built once per number of steps (not per iteration)."""
        inf = self.cfg.inference
        key = (steps, inf.fast_lr, inf.final_lr_ratio, inf.fast_lr_denominator)
        cache = self.__dict__.setdefault("_lrs", {})
        if key not in cache:
            cache[key] = self.array(fast_lrs(steps, inf))
        return cache[key]

    def fit_args(self, steps: int):
        """The fast step sizes of `steps` steps (their number fixes the compiled loop's length)."""
        return self.lrs(steps), None

    def step(self, batch: np.ndarray) -> dict:
        tokens = self.tensor(batch)
        lr = self.slow_lr()
        shaping = kl_shape(self.iteration, self.cfg.inference)
        beta = 1.0 if shaping is None else shaping[0]
        self.params, self.opt_state, out = self.programs.step(
            self.params, self.opt_state, tokens, self.lrs(self.cfg.inference.steps), self.next_key(), np.float32(lr), np.float32(beta)
        )
        metrics = dict(out)
        if shaping is not None:
            metrics["beta"] = beta
        return self.finish_step(metrics, lr)
