import functools

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ltm_ppl.config import InferenceConfig, RunConfig, load_toml
from ltm_ppl.inference.local.pyro import PyroLocal, fit_local_posterior
from ltm_ppl.inference.pyro_elbo import elbo_terms
from ltm_ppl.inference.schedules import fast_lr
from ltm_ppl.models.torch.program import local_guide
from helpers import host_metrics


@pytest.fixture()
def tiny_local(tiny_toml) -> PyroLocal:
    cfg = load_toml(tiny_toml)
    cfg.model.vocab_size = 257
    return PyroLocal(cfg)


def batch(B=4, T=33, vocab=257, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(B, T))


def test_inner_loop_freezes_the_decoder_and_leaves_it_unchanged(tiny_local):
    before = {k: v.clone() for k, v in tiny_local.decoder.state_dict().items()}
    seen = []

    def observe(step):
        seen.append(all(not p.requires_grad for p in tiny_local.decoder.parameters()))
        seen.append(all(p.grad is None for p in tiny_local.decoder.parameters()))

    loc, log_scale, _ = tiny_local.fit_posterior(tiny_local.tensor(batch()), steps=5, observe_step=observe)
    assert len(seen) == 10 and all(seen)
    assert all(p.requires_grad for p in tiny_local.decoder.parameters())  # restored afterwards
    for k, v in tiny_local.decoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert loc.abs().sum() > 0 and not torch.equal(log_scale, torch.zeros_like(log_scale))


def test_slow_step_moves_the_weights_and_counts_iterations(tiny_local):
    before = tiny_local.decoder.tok_emb.weight.detach().clone()
    metrics = host_metrics(tiny_local.step(batch()))
    assert tiny_local.iteration == 1 and not torch.equal(before, tiny_local.decoder.tok_emb.weight)
    assert set(metrics) >= {"loss", "nll", "kl", "lr", "grad_norm"}
    assert metrics["loss"] == pytest.approx(metrics["nll"] + metrics["kl"] * 4 / (4 * 32), rel=1e-5)


def test_per_sequence_elbo_equals_pyros_trace_mean_field_elbo(tiny_local):
    tokens = tiny_local.tensor(batch())
    loc = torch.randn(4, 4, 32) * 0.3
    log_scale = torch.randn(4, 4, 32) * 0.1 - 0.5
    guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
    pyro.set_rng_seed(1)
    loglik, kl = elbo_terms(tiny_local.model, guide, tokens)
    pyro.set_rng_seed(1)
    loss = pyro.infer.TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(tiny_local.model, guide, tokens)
    assert (loglik.mean(0) - kl).sum().item() == pytest.approx(-loss.item(), rel=1e-5)
    expected_kl = 0.5 * (loc**2 + (2 * log_scale).exp() - 1 - 2 * log_scale).sum((-1, -2))
    torch.testing.assert_close(kl, expected_kl, rtol=1e-5, atol=1e-5)


def test_fitted_local_posterior_improves_the_elbo_over_the_prior(tiny_local):
    """On a decoder whose output depends strongly on z (embedding and cross-attention weights
    scaled up), the fast steps must raise every sequence's ELBO well above its value at q = prior
    (same noise). A freshly initialised decoder barely reads z, so there q = prior is optimal."""
    with torch.no_grad():
        tiny_local.decoder.tok_emb.weight.mul_(50)
        for name, p in tiny_local.decoder.named_parameters():
            if ".cross." in name:
                p.mul_(5)
    tiny_local.cfg.inference.fast_lr = 0.05
    windows = batch(B=8)
    noise = np.random.default_rng(0).standard_normal((16, 8, 4, 32)).astype(np.float32)
    with tiny_local.rng_scope(0):
        at_prior = tiny_local.bound(windows, steps=0, noise=noise)
        fitted = tiny_local.bound(windows, steps=32, noise=noise)
    elbo = lambda r: r["loglik"] - r["kl"]  # noqa: E731
    assert np.all(at_prior["kl"] == 0) and np.all(fitted["kl"] > 0)
    assert np.all(elbo(fitted) > elbo(at_prior) + 10.0), (elbo(fitted), elbo(at_prior))


def test_fast_step_size_is_cosine_decayed_to_the_final_ratio():
    lrs = [fast_lr(t, 16, 0.34, 0.1) for t in range(16)]
    assert lrs[0] == pytest.approx(0.34) and lrs[-1] == pytest.approx(0.034)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def linear_gaussian(W, sigma, y):
    with pyro.plate("seq", y.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(W.shape[1]), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, sigma).to_event(1), obs=y)


def test_local_fit_recovers_the_mean_field_optimum_of_a_linear_gaussian_model():
    """Posterior N(m, Lambda^-1), Lambda = I + W'W / s^2, m = Lambda^-1 W'y / s^2; the optimal
    diagonal Gaussian has mean m and variances 1 / Lambda_ii."""
    torch.manual_seed(0)
    W = torch.tensor([[1.0, 0.8, 0.0, 0.0], [0.0, 1.0, 0.7, 0.0], [0.0, 0.0, 1.0, 0.6], [0.5, 0.0, 0.0, 1.0], [1, 1, 1, 1.0]])
    sigma = 0.5
    y = torch.randn(3, 5) * 2
    precision = torch.eye(4) + W.T @ W / sigma**2
    mean = torch.linalg.solve(precision, (W.T @ y.T) / sigma**2).T
    cfg = InferenceConfig(fast_lr=0.1, final_lr_ratio=0.002, num_samples=64)
    model = functools.partial(linear_gaussian, W, sigma)
    loc, log_scale, _ = fit_local_posterior(model, y, (4,), cfg, steps=1500, device="cpu")
    torch.testing.assert_close(loc, mean, atol=1e-2, rtol=0)
    torch.testing.assert_close((2 * log_scale).exp(), (1 / precision.diagonal()).expand(3, 4), rtol=0.05, atol=0)


def test_reference_init_starts_narrow(tiny_local):
    cfg = RunConfig().inference
    cfg.init = "reference"
    assert cfg.init_log_scale == -5.0 and InferenceConfig().init_log_scale == 0.0


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda w: w.pop("layers.1.mlp.up.weight"), "lacks tensor layers.1.mlp.up.weight"),
        (lambda w: w.update({"layers.0.attn.qkv.weight": w["layers.0.attn.qkv.weight"][:-1]}), "tensor layers.0.attn.qkv.weight in weights.safetensors has shape"),
        (lambda w: w.update({"lm_head.weight": w["tok_emb.weight"]}), "has tensor lm_head.weight"),
    ],
)
def test_weights_that_do_not_match_the_config_are_refused_by_name(tiny_local, damage, fragment):
    from ltm_ppl.errors import LtmError

    weights = tiny_local.weights()
    damage(weights)
    with pytest.raises(LtmError, match=fragment):
        tiny_local.load_weights(weights)
