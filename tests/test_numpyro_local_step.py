"""The NumPyro local method's training step (the NumPyro backend's default method) beyond its plain
records (tests/test_training_numbers.py): the step with a KL warm-up and free bits (one training
iteration with jit off, q and noise read off the step by a spy, as there), and the fast fit's
fixed-noise mode. Written for the survivors of issue 25's fourth mutation pass (docs/mutation.md)."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_cfg
from test_training_numbers import (B, RTOL, analytic_kl_per_vector, check_first_adamw_step, check_records,
                                   numpyro_elbo_sum, numpyro_step, training_setup)

pytestmark = pytest.mark.usefixtures("jax_caches", "torch_one_thread")


@pytest.mark.slow  # ~20 s: the local step with jit off
def test_numpyro_local_shaped_step_records_the_shaped_objective_and_trains_on_the_plain_gradient(monkeypatch):
    """local with a KL warm-up and free bits (iteration 0): loss = nll + beta * sum_ij max(free_bits,
    KL_ij) / tokens at the fitted q, beta = 1/4 recorded; nll and kl are the plain ELBO's; every
    weight moves down the plain ELBO's gradient (the shaped KL is constant in the decoder)."""
    import jax
    import jax.numpy as jnp

    free_bits = 6.0  # nats per latent vector: between the smallest and the largest KL_ij of the fitted q here
    obj, batch = training_setup("local", "numpyro", kl_warmup_iters=4, free_bits=free_bits, steps=2)
    before = obj.weights()
    metrics, params, records = numpyro_step(obj, batch, monkeypatch, {"elbo": obj.programs})
    after = obj.weights()
    (args, _), = records["elbo"]
    tokens, loc, log_scale, noise = args[1], args[2], args[3], args[5]
    n_tokens = B * (batch.shape[1] - 1)
    z = loc + jnp.exp(log_scale) * noise
    loss_of = lambda p: -numpyro_elbo_sum(obj.programs.model(p), tokens, loc, log_scale, z) / n_tokens  # noqa: E731
    per_vector = analytic_kl_per_vector(loc, log_scale)  # [B, n_z]
    assert (per_vector < free_bits).any() and (per_vector > free_bits).any()  # the floor binds for some vectors only
    nll = float(loss_of(params)) - per_vector.sum() / n_tokens
    expected = {"loss": nll + 0.25 * np.maximum(per_vector, free_bits).sum() / n_tokens, "nll": nll,
                "kl": per_vector.sum(-1).mean(), "beta": 0.25}
    grads = jax.grad(loss_of)(params)
    check_records(obj, metrics, expected, list(grads.values()), bound=False)
    assert check_first_adamw_step(obj.cfg.train, before, after, grads, metrics)


def test_numpyro_fixed_noise_fit_reuses_one_standard_normal_eps_at_every_step():
    """inference.fixed_noise (the published reference's mode): LocalPrograms.fit draws one eps
    [S, B, *latent] ~ N(0, 1), returns it, and its fast loop reuses it at every step: the fitted q
    is that of the loop given the same eps as per-step noise at each step (another path through
    fit_local_posterior), and not that of a loop whose second step sees other noise."""
    import jax
    import jax.numpy as jnp

    from ltm_ppl.inference import create

    samples, batch_size = 4, 8
    obj = create(tiny_cfg("local", num_samples=samples, fixed_noise=True, steps=3))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 64, (batch_size, obj.cfg.model.block_size + 1)))
    lrs, key = obj.lrs(3), jax.random.PRNGKey(11)
    fit = jax.jit(obj.programs.fit)
    loc, log_scale, eps = fit(obj.params, tokens, lrs, key)
    assert eps.shape == (samples, batch_size, *obj.latent_shape) and eps.dtype == jnp.float32
    n = eps.size  # 4 * 8 * 4 * 16 = 2048 standard normal draws
    assert abs(float(eps.mean())) < 4 / n**0.5 and abs(float(eps.std()) - 1) < 4 / (2 * n) ** 0.5
    same = jnp.broadcast_to(eps, (3, *eps.shape))
    loc_same, log_scale_same, _ = fit(obj.params, tokens, lrs, key, same)
    np.testing.assert_allclose(loc, loc_same, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_scale, log_scale_same, rtol=1e-5, atol=1e-6)
    other = same.at[1].set(-eps)  # the second step sees other noise
    loc_other, _, _ = fit(obj.params, tokens, lrs, key, other)
    assert float(jnp.abs(loc_other - loc).max()) > 1e-3
