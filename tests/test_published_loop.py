"""The paper preset's fast loop against the published loop, written out here independently: AdamW
(betas 0.9/0.999, eps 1e-8, decoupled weight decay 0.01) on (mu, log variance), the start
mu = 0.01 N(0,1), log variance = -5 + 0.1 N(0,1), one eps reused at every step, step size
lr/10 + 0.5 (1 + cos(pi s / T)) (lr - lr/10) for s = 0..T-1, on the negative ELBO summed over
tokens and sequences (no division: through Adam's eps the scale moves q). Same mu, sigma and final
loss in both backends (tiny decoder, random weights)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_weights, tiny_cfg

from ltm_ppl.presets import preset_settings

T, B, LR, WD = 6, 3, 0.34, 0.01


def paper_cfg(backend: str):
    cfg = tiny_cfg(backend=backend)
    for dotted, value in preset_settings("paper").items():
        section, name = dotted.split(".")
        if section == "inference":
            setattr(cfg.inference, name, value)
    cfg.inference.steps = cfg.inference.eval_steps = T
    return cfg


def published_loop(decoder, tokens, mu, logvar, eps):
    """The reference's arithmetic, by hand. Returns (mu, sigma, loss at the last (mu, logvar) and eps)."""

    def loss_of(mu, logvar):
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = decoder(tokens[:, :-1], z)
        ce = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="sum")
        kl = 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum()
        return ce + kl  # summed over tokens and sequences (model.py's training branch), no division

    params = [mu.clone(), logvar.clone()]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for s in range(T):
        lr = LR / 10 + 0.5 * (1 + math.cos(math.pi * s / T)) * (LR - LR / 10)
        leaves = [p.requires_grad_(True) for p in params]
        grads = torch.autograd.grad(loss_of(*leaves), leaves)
        new = []
        for i, (p, g) in enumerate(zip(params, grads)):
            p = p.detach() * (1 - lr * WD)
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            m_hat, v_hat = m[i] / (1 - 0.9 ** (s + 1)), v[i] / (1 - 0.999 ** (s + 1))
            new.append(p - lr * m_hat / (v_hat.sqrt() + 1e-8))
        params = new
    with torch.no_grad():
        return params[0], torch.exp(0.5 * params[1]), float(loss_of(*params))


def setup(backend: str):
    from ltm_ppl.inference import create

    inference = create(paper_cfg(backend))
    weights = random_weights({k: v.shape for k, v in inference.weights().items()}, seed=21)
    inference.load_weights(weights)
    tokens = np.random.default_rng(22).integers(0, 64, (B, 17))
    return inference, weights, tokens


def torch_decoder(weights):
    from ltm_ppl.models.torch.decoder import Decoder

    decoder = Decoder(paper_cfg("pyro").model)
    decoder.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return decoder


def test_pyro_preset_is_the_published_loop(torch_one_thread):
    inference, weights, batch = setup("pyro")
    tokens = torch.from_numpy(batch)
    shape = (B, 4, 32)
    torch.manual_seed(5)
    loc, log_scale, eps = inference.fit_posterior(tokens, T)
    torch.manual_seed(5)  # the preset draws the start (mu, then log variance), then the one eps
    mu0, logvar0 = 0.01 * torch.randn(shape), -5 + 0.1 * torch.randn(shape)
    eps0 = torch.randn((1, *shape))
    torch.testing.assert_close(eps, eps0)
    mu, sigma, loss = published_loop(torch_decoder(weights), tokens, mu0, logvar0, eps0[0])
    torch.testing.assert_close(loc, mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(log_scale.exp(), sigma, rtol=1e-4, atol=1e-6)
    assert (mu - mu0).abs().max() > 0.05  # the loop moved q
    # The reported fixed-noise number (ltm eval --fixed-noise's row) at that same eps.
    torch.manual_seed(5)
    terms = inference.bound(batch, T, at_fast_noise=True)
    assert -(terms["loglik"] - terms["kl"]).sum() == pytest.approx(loss, rel=1e-5)
    # Without asking, a run trained with the published loop is bounded with fresh noise.
    torch.manual_seed(5)
    fresh = inference.bound(batch, T)
    assert -(fresh["loglik"] - fresh["kl"]).sum() != pytest.approx(loss, rel=1e-3)
    np.testing.assert_allclose(fresh["kl"], terms["kl"], rtol=1e-6)  # the same q: only the estimate's eps differs


@pytest.mark.usefixtures("jax_caches")
def test_numpyro_preset_is_the_published_loop(torch_one_thread):
    import functools

    import jax.numpy as jnp

    from ltm_ppl.inference.local.fast_fit import FastFit
    from ltm_ppl.inference.local.numpyro import fast_lrs, fit_local_posterior
    from ltm_ppl.noise import FastNoise
    from ltm_ppl.inference.numpyro_elbo import elbo_terms
    from ltm_ppl.models.jax.program import local_guide, ltm_model

    inference, weights, batch = setup("numpyro")
    cfg = inference.cfg
    rng = np.random.default_rng(23)
    shape = (B, 4, 32)
    mu0 = (0.01 * rng.standard_normal(shape)).astype(np.float32)
    logvar0 = (-5 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    eps = rng.standard_normal((1, *shape)).astype(np.float32)
    model = functools.partial(ltm_model, {k: jnp.asarray(v) for k, v in weights.items()}, cfg.model, dtype=jnp.float32)
    tokens = jnp.asarray(batch)
    loc, log_scale = fit_local_posterior(model, tokens, (4, 32), cfg.inference, jnp.asarray(fast_lrs(T, cfg.inference)),
                                         FastFit(FastNoise(fixed=jnp.asarray(eps)), start=(mu0, 0.5 * logvar0)))
    mu, sigma, loss = published_loop(torch_decoder(weights), torch.from_numpy(batch), torch.from_numpy(mu0),
                                     torch.from_numpy(logvar0), torch.from_numpy(eps[0]))
    np.testing.assert_allclose(np.asarray(loc), mu.numpy(), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(np.exp(np.asarray(log_scale)), sigma.numpy(), rtol=1e-4, atol=1e-6)
    guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
    loglik, kl = elbo_terms(model, guide, tokens, num_particles=1, latent_value=loc + jnp.exp(log_scale) * eps)
    assert float(-(loglik.mean(0) - kl).sum()) == pytest.approx(loss, rel=1e-5)


def test_published_start_is_fresh_per_batch_with_the_published_spread():
    from ltm_ppl.inference.local.pyro import initial_local

    inf = paper_cfg("pyro").inference
    a, b = initial_local(64, (4, 32), inf, "cpu"), initial_local(64, (4, 32), inf, "cpu")
    assert not torch.equal(a[0], b[0])
    assert a[0].std().item() == pytest.approx(0.01, rel=0.05) and a[0].mean().abs() < 1e-3
    log_var = 2 * a[1]
    assert log_var.mean().item() == pytest.approx(-5, abs=0.01) and log_var.std().item() == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize("fast_loss", ["sum", "per_token"])
def test_the_summed_loss_scale_is_the_published_one(fast_loss, torch_one_thread):
    """Adam is blind to the loss scale except through its eps (1e-8), so the scale shows where the
    gradient on z is small: at the init's weight scale (std 0.02), q after T steps matches the
    published loop to float32 precision only with the summed loss."""
    cfg = paper_cfg("pyro")
    cfg.inference.fast_loss = fast_loss
    from ltm_ppl.inference import create

    inference = create(cfg)
    weights = random_weights({k: v.shape for k, v in inference.weights().items()}, seed=21)
    weights = {k: v if v.ndim == 1 else (v * 0.02 / 0.3).astype(np.float32) for k, v in weights.items()}
    inference.load_weights(weights)
    tokens = torch.from_numpy(np.random.default_rng(22).integers(0, 64, (B, 17)))
    torch.manual_seed(5)
    loc, _, _ = inference.fit_posterior(tokens, T)
    torch.manual_seed(5)
    shape = (B, 4, 32)
    mu0, logvar0 = 0.01 * torch.randn(shape), -5 + 0.1 * torch.randn(shape)
    eps = torch.randn((1, *shape))[0]  # drawn before the decoder's init takes from the stream
    mu, _, _ = published_loop(torch_decoder(weights), tokens, mu0, logvar0, eps)
    gap = float((loc - mu).abs().max())
    assert gap < 1e-6 if fast_loss == "sum" else gap > 5e-5, gap  # measured: 6e-8 and 1.6e-4
