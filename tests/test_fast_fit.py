"""FastFit (inference/local/fast_fit.py): how local's fast loop fits q, one value object for both
backends' fit_local_posterior; what it refuses when built, and what each backend's loop refuses."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ltm_ppl.config import InferenceConfig
from ltm_ppl.inference.local.fast_fit import FastFit
from ltm_ppl.noise import FastNoise, Rows


def test_fast_fit_defaults_to_the_plain_fit_from_torch_stream():
    fit = FastFit()
    assert fit.noise.source == "stream" and fit.start is None and fit.kl_shaping is None
    assert not fit.train_decoder and fit.observe_step is None and fit.compiled is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.kl_shaping = (0.5, 0.0)


def test_fast_fit_refuses_what_cannot_be_when_built():
    with pytest.raises(ValueError, match="noise must be a noise.FastNoise"):
        FastFit(Rows(0, 0))  # the key where the noise goes
    with pytest.raises(ValueError, match=r"kl_shaping must be a pair \(beta, free bits\)"):
        FastFit(kl_shaping=0.5)
    with pytest.raises(ValueError, match=r"start must be a pair \(loc, log_scale\)"):
        FastFit(start=(np.zeros(2),))
    with pytest.raises(ValueError, match="train_decoder or compiled, not both"):
        FastFit(train_decoder=True, compiled=object())
    FastFit(FastNoise.fresh(Rows(0, 0)), (np.zeros(2), np.zeros(2)), (0.5, 0.1), train_decoder=True)  # all at once is fine


def _numpyro_fit(fit, params=None, init="prior"):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    from ltm_ppl.inference.local.numpyro import fast_lrs, fit_local_posterior

    def model(x):
        with numpyro.plate("seq", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
            numpyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    inf = InferenceConfig(num_samples=2, init=init)
    x = jnp.ones((3, 5), jnp.float32)
    return fit_local_posterior(model if params is None else (lambda p: model), x, (5,), inf, jnp.asarray(fast_lrs(2, inf)),
                               fit, params)


def test_the_jax_loop_refuses_what_only_the_torch_loop_has():
    import jax

    with pytest.raises(ValueError, match="observe_step is the Pyro fast loop's only"):
        _numpyro_fit(FastFit(FastNoise.fresh(jax.random.PRNGKey(0)), observe_step=print))
    with pytest.raises(ValueError, match="compiled is the Pyro fast loop's only"):
        _numpyro_fit(FastFit(FastNoise.fresh(jax.random.PRNGKey(0)), compiled=object()))
    with pytest.raises(ValueError, match="no random stream of its own"):
        _numpyro_fit(FastFit())
    with pytest.raises(ValueError, match="come with FastFit\\(train_decoder=True\\) and only then"):
        _numpyro_fit(FastFit(FastNoise.fresh(jax.random.PRNGKey(0)), train_decoder=True))  # no weights given
    with pytest.raises(ValueError, match="come with FastFit\\(train_decoder=True\\) and only then"):
        _numpyro_fit(FastFit(FastNoise.fresh(jax.random.PRNGKey(0))), params={"w": np.zeros(2)})
    eps = np.zeros((2, 3, 5), np.float32)
    with pytest.raises(ValueError, match="published start is drawn from FastNoise's key"):
        _numpyro_fit(FastFit(FastNoise.reused(eps)), init="published")
    loc, log_scale = _numpyro_fit(FastFit(FastNoise.reused(eps, jax.random.PRNGKey(0))), init="published")  # key and eps
    assert loc.shape == log_scale.shape == (3, 5)


def test_the_torch_loop_refuses_a_fixed_eps_it_draws_itself():
    from ltm_ppl.inference.local.pyro import fit_local_posterior

    with pytest.raises(ValueError, match="draws its fixed eps itself"):
        fit_local_posterior(None, np.zeros((1, 4)), (2,), InferenceConfig(), 1, "cpu",
                            FastFit(FastNoise.reused(np.zeros((1, 1, 2), np.float32))))
