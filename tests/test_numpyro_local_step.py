"""The NumPyro local method's slow step (the default method of the NumPyro backend) beyond its plain
records (tests/test_training_numbers.py): with a KL warm-up and free bits, and its update itself
(issue 25's fourth mutation pass, docs/mutation.md). One training iteration with jit off, q and
noise read off the step by a spy, as in test_training_numbers.py."""
from __future__ import annotations

import numpy as np
import pytest
from test_training_numbers import (B, RTOL, check_first_adamw_step, check_records, numpyro_elbo_sum, numpyro_step,
                                   training_setup)

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
    l64, s64 = np.asarray(loc, np.float64), np.asarray(log_scale, np.float64)
    per_vector = (0.5 * (l64**2 + np.exp(2 * s64) - 1 - 2 * s64)).sum(-1)  # [B, n_z]
    assert (per_vector < free_bits).any() and (per_vector > free_bits).any()  # the floor binds for some vectors only
    nll = float(loss_of(params)) - per_vector.sum() / n_tokens
    expected = {"loss": nll + 0.25 * np.maximum(per_vector, free_bits).sum() / n_tokens, "nll": nll,
                "kl": per_vector.sum(-1).mean(), "beta": 0.25}
    grads = jax.grad(loss_of)(params)
    check_records(obj, metrics, expected, list(grads.values()), bound=False)
    assert check_first_adamw_step(obj.cfg.train, before, after, grads, metrics)
