"""`local` in Pyro: the paper's dual-rate variational Bayes.

Fast: per-sequence q_i = N(mu_i, diag sigma_i^2) fitted by T steps of Adam (AdamW, SGD) on the ELBO,
cosine-decayed step size, fresh noise at every step, decoder frozen (no weight gradients).
Slow: one AdamW step on the decoder at the fitted q_i with fresh noise (train.slow_gradient
"elbo"), or the published update ("trajectory"): one eps for the whole fast loop, whose backward
passes reach the decoder too; its gradient is their sum plus the cross-entropy's at the final
z = mu + sigma eps, then clipped and AdamW.
Semi-amortized (`init = "amortized"`): the fast steps start from the encoder's q; the encoder
learns from its own ELBO at its output (no backpropagation through the refinement), the decoder
from the refined q.
"""
from __future__ import annotations

import dataclasses
import functools
import sys

import numpy as np
import pyro
import torch

from ... import stop_signals
from ...models.torch.program import local_guide
from ..gaussian import FAST_ADAM_EPS, FAST_BETA1, FAST_BETA2, published_start, shaped_kl
from ..pyro_backend import PyroBackend, frozen
from ..pyro_elbo import elbo_terms
from ..schedules import fast_loss_divisor, fast_lr, kl_shape
from ...noise import ENCODER, FIXED, INIT, SLOW, FastNoise, torch_eps
from .compiled_fast_step import CompiledFastStep
from .fast_fit import FastFit


def initial_local(B, shape, inf_cfg, device, rows=None):
    """(loc, log_scale) where the fast steps begin without an encoder: a fixed point, or the
    published random start (mu 0.01 N(0,1), log variance -5 + 0.1 N(0,1), fresh per call)."""
    if inf_cfg.init == "published" and rows is not None:  # keyed per sequence (noise.py)
        draw = torch_eps(rows, INIT, B, shape, 2, device)
        return published_start(draw[0], draw[1])
    if inf_cfg.init == "published":
        return published_start(torch.randn((B, *shape), device=device), torch.randn((B, *shape), device=device))
    return torch.zeros((B, *shape), device=device), torch.full((B, *shape), inf_cfg.init_log_scale, device=device)


def fast_optimizer(params, inf_cfg):
    if inf_cfg.optimizer == "adamw":  # the published loop: torch's AdamW defaults
        return torch.optim.AdamW(params, lr=inf_cfg.fast_lr, betas=(FAST_BETA1, FAST_BETA2), eps=FAST_ADAM_EPS, weight_decay=inf_cfg.fast_weight_decay)
    if inf_cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=inf_cfg.fast_lr)
    return torch.optim.SGD(params, lr=inf_cfg.fast_lr)


def fit_local_posterior(model, tokens, shape, inf_cfg, steps: int, device, fit: FastFit = FastFit()):
    """Fit (loc, log_scale) of shape [B, *shape] by `steps` fast steps; model(tokens) is the joint.

    Minimises the negative ELBO summed over sequences (each sequence's parameters see only their
    own term), per predicted token or summed over tokens too (inf_cfg.fast_loss,
    schedules.fast_loss_divisor). Starts at fit.start = (loc, log_scale) when given, else at
    initial_local (inf_cfg.init). The steps move (loc, log sigma), or (loc, log variance) with
    inf_cfg.scale_param = "log_variance" (the published loop). With inf_cfg.fixed_noise one eps is
    drawn (after the start) and reused (the published reference's mode, for comparison only); it
    is returned for the final number. fit.noise (noise.FastNoise) gives each step's eps: per_step
    [steps, S, B, *shape] (parity tests); else its key (noise.Rows) keys each step's eps by (seed,
    iteration, step, global row), so it does not depend on the worker count, and the published
    start and the fixed eps too; else the torch stream. Its `fixed` is the JAX loop's only.
    fit.kl_shaping = (beta, free bits) replaces the KL term by shaped_kl's (training iterations
    only, never a reported bound). fit.compiled (a CompiledFastStep, `--compile` on the LTM) runs
    the same steps as one compiled function each (compiled_fast_step.py); eps never left to Pyro
    then. fit.train_decoder: every step's backward pass also reaches the decoder's weights, whose
    .grad accumulate over the steps (the published trajectory update; the caller zeroes them first).
    fit.observe_step(t) is called after each step.
    """
    noise, start, kl_shaping, observe_step = fit.noise, fit.start, fit.kl_shaping, fit.observe_step
    if noise.fixed is not None:
        raise ValueError("the torch fast loop draws its fixed eps itself (inference.fixed_noise): give FastNoise no `fixed`")
    rows, fast_noise = noise.key, noise.per_step
    B = tokens.shape[0]
    loc, log_scale = initial_local(B, shape, inf_cfg, device, rows) if start is None else (t.detach().clone() for t in start)
    # The moved scale parameter: log sigma, or log variance = 2 log sigma.
    factor = 2.0 if inf_cfg.scale_param == "log_variance" else 1.0
    scale_param = (factor * log_scale).requires_grad_(True)
    loc.requires_grad_(True)
    S = inf_cfg.num_samples
    eps = torch.randn((S, B, *shape), device=device) if inf_cfg.fixed_noise else None
    if rows is not None and inf_cfg.fixed_noise:
        eps = torch_eps(rows, FIXED, B, shape, S, device)

    def given_eps(t):  # the one eps-draw site of the fast loop; None: the sampler draws its own
        step_eps = eps if fast_noise is None else fast_noise[t]
        if step_eps is None and rows is not None:
            step_eps = torch_eps(rows, t, B, shape, S, device)
        return step_eps

    if fit.compiled is not None:
        def noise_of(t):  # the eager loop's eps of step t, drawn here where Pyro would draw it
            step_eps = given_eps(t)
            return torch.randn((S, B, *shape), device=device) if step_eps is None else step_eps

        loc, scale_param = fit.compiled.fit(tokens, loc.detach(), scale_param.detach(), steps, inf_cfg, noise_of,
                                            observe_step, kl_shaping)
        return loc, scale_param / factor, eps
    opt = fast_optimizer([loc, scale_param], inf_cfg)
    for t in range(steps):
        stop_signals.check()  # a stop signal ends the iteration here (one worker)
        for group in opt.param_groups:
            group["lr"] = fast_lr(t, steps, inf_cfg.fast_lr, inf_cfg.final_lr_ratio, inf_cfg.fast_lr_denominator)
        log_scale = scale_param / factor
        guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
        step_eps = given_eps(t)
        value = None if step_eps is None else loc + log_scale.exp() * step_eps
        loglik, kl = elbo_terms(model, guide, tokens, num_particles=S if step_eps is None else step_eps.shape[0], latent_value=value)
        if kl_shaping is not None:
            kl = shaped_kl(loc, log_scale, *kl_shaping, torch)
        loss = -(loglik.mean(0) - kl).sum() / fast_loss_divisor(inf_cfg, tokens.shape[-1])
        if fit.train_decoder:  # the weights' .grad accumulate step after step
            loc.grad = scale_param.grad = None
            loss.backward()
        else:
            loc.grad, scale_param.grad = torch.autograd.grad(loss, [loc, scale_param])
        opt.step()
        if observe_step is not None:
            observe_step(t)
    return loc.detach(), (scale_param / factor).detach(), eps


class PyroLocal(PyroBackend):
    method = "local"
    posterior_kind = "variational"  # independent draws from q: PSIS k-hat applies

    _compiled_step = None

    @property
    def compiled_fast_step(self):
        """The fast step compiled whole (`--compile` on the LTM), built once and kept: None otherwise
        (an injected model, or compile_fast_step switched off: then only the decoder is compiled)."""
        if not (self.cfg.train.compile and self.compile_fast_step and self.injected is None and self.cfg.model.latent):
            return None
        if self._compiled_step is None:
            inf = self.cfg.inference
            self._compiled_step = CompiledFastStep(self.decoder, self.autocast, inf.optimizer,
                                                   2.0 if inf.scale_param == "log_variance" else 1.0,
                                                   sum_loss=inf.fast_loss == "sum")
        return self._compiled_step

    compile_fast_step = True  # benches switch it off to time today's decoder-only compile

    def start(self, tokens):
        """Where the fast steps begin: the encoder's q (semi-amortized) or the configured point."""
        if self.encoder is None:
            return None
        with torch.no_grad():
            return self.encoder(tokens)

    def fit_posterior(self, tokens: torch.Tensor, steps: int, observe_step=None, fast_noise=None, rows=None, kl_shaping=None):
        """q_i fitted with the decoder frozen; returns (loc, log_scale, fixed eps or None)."""
        if fast_noise is not None:
            fast_noise = torch.as_tensor(fast_noise, dtype=torch.float32, device=self.device)
        # No argument validation in the hot loop: a diverged decoder then yields a non-finite loss
        # that the trainer reports (naming the iteration) instead of a ValueError deep in Pyro.
        key = rows if rows is not None else self.noise_rows
        how = FastFit(FastNoise(key=key, per_step=fast_noise), self.start(tokens), kl_shaping, observe_step=observe_step)
        fit = functools.partial(fit_local_posterior, self.model, tokens, self.latent_shape, self.cfg.inference, steps,
                                self.device)
        with frozen(self.decoder), pyro.validation_enabled(False):
            compiled = self.compiled_fast_step
            if compiled is None:
                return fit(how)
            try:
                return fit(dataclasses.replace(how, compiled=compiled))
            except torch._dynamo.exc.TorchDynamoException as err:
                if compiled.captured:  # it compiled and ran before: a real error, not a capture limit
                    raise
                # A kernel the capture cannot take (e.g. one a GPU library brings): say so once and
                # keep the decoder-only compile; the step is functional, so nothing moved yet.
                print(f"warning: the whole fast step did not compile ({type(err).__name__}); "
                      "--compile compiles the decoder only", file=sys.stderr)
                self.compile_fast_step = False
                return fit(how)

    def trajectory_step(self, tokens, rows, shaping) -> dict:
        """train.slow_gradient "trajectory", the published update: the fast loop with one eps and the
        decoder's weights not frozen, so each step's backward adds the gradient of its loss at that
        fast iterate; then the cross-entropy at the final z = mu + sigma eps (same eps) adds its
        own, and slow_update clips the sum and steps, keeping what the fast loop accumulated."""
        inf = dataclasses.replace(self.cfg.inference, fixed_noise=True)
        self.optimizer.zero_grad(set_to_none=True)
        with pyro.validation_enabled(False):
            loc, log_scale, eps = fit_local_posterior(
                self.model, tokens, self.latent_shape, inf, inf.steps, self.device,
                FastFit(FastNoise.fresh(rows), kl_shaping=shaping, train_decoder=True))
        loglik, kl = self.gaussian_elbo(tokens, loc, log_scale, eps.shape[0], eps)
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
        nll = -loglik.mean(0).sum() / n_tokens  # the published last_loss: mean cross-entropy at z
        loss = nll + kl.sum() / n_tokens  # (its KL term is constant in the decoder)
        metrics = {"loss": loss.detach(), "nll": nll.detach(), "kl": kl.mean().detach()}
        if shaping is not None:
            metrics["beta"] = shaping[0]
        metrics.update(self.slow_update(loss, metrics, keep_grads=True))
        return metrics

    def step(self, batch: np.ndarray) -> dict:
        tokens = self.tensor(batch)
        rows = self.training_rows(tokens.shape[0])
        shaping = kl_shape(self.iteration, self.cfg.inference)  # None: the plain ELBO
        if self.cfg.train.slow_gradient == "trajectory":
            return self.trajectory_step(tokens, rows, shaping)
        loc, log_scale, _ = self.fit_posterior(tokens, self.cfg.inference.steps, rows=rows, kl_shaping=shaping)
        slow_eps = torch_eps(rows, SLOW, tokens.shape[0], self.latent_shape, self.cfg.inference.num_samples, self.device)
        loglik, kl = self.gaussian_elbo(tokens, loc, log_scale, self.cfg.inference.num_samples, slow_eps)
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
        nll = -loglik.mean(0).sum() / n_tokens
        loss = nll + kl.sum() / n_tokens
        metrics = {"loss": loss.detach(), "nll": nll.detach(), "kl": kl.mean().detach()}  # device scalars: no sync
        objective = loss
        if shaping is not None:  # the training loss is the shaped objective (its KL term is constant in the decoder)
            objective = nll + shaped_kl(loc, log_scale, *shaping, torch).sum() / n_tokens
            metrics |= {"loss": objective.detach(), "beta": shaping[0]}
        if self.encoder is not None:
            # The encoder's own ELBO at its output, its eps keyed per sequence; the decoder is frozen
            # for this term (the plain module: only the encoder's gradients are reduced for it).
            S = self.cfg.inference.num_samples
            enc_loc, enc_log_scale = self.trained_encoder(tokens)
            enc_eps = torch_eps(rows, ENCODER, tokens.shape[0], self.latent_shape, S, self.device)
            with frozen(self.decoder):
                enc_loglik, enc_kl = self.gaussian_elbo(tokens, enc_loc, enc_log_scale, S, enc_eps)
            encoder_loss = -(enc_loglik.mean(0) - enc_kl).sum() / n_tokens
            metrics["encoder_loss"] = encoder_loss.detach()
            objective = loss + encoder_loss
        metrics.update(self.slow_update(objective, metrics))  # skipped on the device unless finite
        return metrics

    def proposal(self, tokens, steps: int, fast_noise=None):
        """q fitted by `steps` fast steps: (loc, log_scale, eps). With inference.fixed_noise the
        fast steps reuse one eps; the reported estimate reuses it (eps not None) only on eval
        --fixed-noise's labelled row (bound's at_fast_noise): the reference's number, not
        a bound. fast_noise [steps, S, B, n_z, d_z] fixes every fast step's eps."""
        return self.fit_posterior(tokens, steps, fast_noise=fast_noise)
