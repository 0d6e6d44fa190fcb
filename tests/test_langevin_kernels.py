"""The MALA acceptance probability of both backends' kernels equals the Metropolis-Hastings ratio
written out here independently, on the linear-Gaussian model with injected noise: a ratio missing
the forward or the backward proposal density (or with a wrong gradient) fails it. The chains'
agreement with the exact posterior in mean and variance is in tests/test_methods_*.py."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import SIGMA, W

pytestmark = pytest.mark.usefixtures("jax_caches", "torch_one_thread")

C, B, STEP = 3, 2, 0.6  # a step large enough that both proposal terms are far from each other


def log_target(y, z):
    """log N(z; 0, I) + log N(y; W z, sigma^2 I) up to a constant, float64."""
    resid = (y - z @ W.T.astype(np.float64)) / SIGMA
    return -0.5 * (z**2).sum(-1) - 0.5 * (resid**2).sum(-1)


def grad_log_target(y, z):
    return -z + (y - z @ W.T.astype(np.float64)) @ W.astype(np.float64) / SIGMA**2


def mh_log_ratio(y, z, eps, s):
    """log pi(z') - log pi(z) + log q(z | z') - log q(z' | z) for the Langevin proposal
    q(z' | z) = N(z + s^2/2 grad log pi(z), s^2 I), z' = its mean + s eps; and its two proposal terms."""
    forward_mean = z + 0.5 * s**2 * grad_log_target(y, z)
    proposal = forward_mean + s * eps
    backward_mean = proposal + 0.5 * s**2 * grad_log_target(y, proposal)
    log_q_forward = -((proposal - forward_mean) ** 2).sum(-1) / (2 * s**2)
    log_q_backward = -((z - backward_mean) ** 2).sum(-1) / (2 * s**2)
    return log_target(y, proposal) - log_target(y, z) + log_q_backward - log_q_forward, proposal, log_q_forward, log_q_backward


def setup():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((B, 5)).astype(np.float32) * 2
    z0 = rng.standard_normal((C, B, 4)).astype(np.float32)
    eps = rng.standard_normal((1, C, B, 4)).astype(np.float32)
    log_ratio, proposal, fwd, bwd = mh_log_ratio(y.astype(np.float64), z0.astype(np.float64), eps[0].astype(np.float64), STEP)
    # the injected uniform: half the chains just below the ratio (accept), half just above (reject)
    log_u = np.where(np.arange(C * B).reshape(C, B) % 2 == 0, log_ratio - 0.05, log_ratio + 0.05)
    log_u = np.minimum(log_u, -1e-3)[None].astype(np.float32)
    return y, z0, eps, log_u, log_ratio, proposal, fwd, bwd


def check(alpha, z_next, z0, log_u, log_ratio, proposal, fwd, bwd):
    assert np.all(np.abs(fwd) > 0.3) and np.all(np.abs(bwd - fwd) > 0.3)  # either term dropped shows
    assert np.any(log_ratio < -0.5)  # some proposals are rejected with probability > 0.4
    np.testing.assert_allclose(alpha, np.minimum(1.0, np.exp(log_ratio)), rtol=2e-4, atol=1e-5)
    accept = log_u[0] < log_ratio
    assert accept.any() and (~accept).any()
    expected = np.where(accept[..., None], proposal, z0)
    np.testing.assert_allclose(z_next, expected, rtol=1e-4, atol=1e-5)


def test_pyro_mala_acceptance_is_the_metropolis_hastings_ratio():
    import torch

    from ltm_ppl.inference.langevin.pyro import langevin_chains

    y, z0, eps, log_u, log_ratio, proposal, fwd, bwd = setup()
    yt = torch.from_numpy(y).double()
    wt = torch.from_numpy(W).double()

    def log_joint(z):  # the same target in torch (float64, exact gradient by autograd)
        return -0.5 * (z**2).sum(-1) - 0.5 * (((yt - z @ wt.T) / SIGMA) ** 2).sum(-1)

    run = langevin_chains(log_joint, torch.from_numpy(z0).double(), warmup=0, draws=1, step_size=STEP, mala=True,
                          noise=(torch.from_numpy(eps).double(), torch.from_numpy(log_u).double()))
    check(run["accept_prob"][:, 0].numpy(), run["z"][:, 0].numpy(), z0, log_u, log_ratio, proposal, fwd, bwd)


def test_numpyro_mala_acceptance_is_the_metropolis_hastings_ratio():
    import jax.numpy as jnp

    from ltm_ppl.inference.langevin.numpyro import langevin_sample

    y, z0, eps, log_u, log_ratio, proposal, fwd, bwd = setup()

    def log_joint(z):
        return -0.5 * (z**2).sum(-1) - 0.5 * (((jnp.asarray(y) - z @ jnp.asarray(W).T) / SIGMA) ** 2).sum(-1)

    run = langevin_sample(log_joint, z0, warmup=0, draws=1, step_size=STEP, mala=True, noise=(eps, log_u))
    check(np.asarray(run["accept"][0]), np.asarray(run["draws"][0]), z0, log_u, log_ratio, proposal, fwd, bwd)


def fixed_step_chains(backend: str, y, draws: int, step: float) -> np.ndarray:
    """MALA draws [chain, draw, 4] of the posterior of one y, fixed step size (no warm-up)."""
    z0 = np.random.default_rng(1).standard_normal((4, 1, 4)).astype(np.float32)
    if backend == "pyro":
        import torch

        from ltm_ppl.inference.langevin.pyro import langevin_chains

        torch.manual_seed(2)
        yt, wt = torch.from_numpy(y), torch.from_numpy(W)
        run = langevin_chains(lambda z: -0.5 * (z**2).sum(-1) - 0.5 * (((yt - z @ wt.T) / SIGMA) ** 2).sum(-1),
                              torch.from_numpy(z0), warmup=0, draws=draws, step_size=step, mala=True)
        return run["z"][:, :, 0].numpy()
    import jax
    import jax.numpy as jnp

    from ltm_ppl.inference.langevin.numpyro import langevin_sample

    logp = lambda z: -0.5 * (z**2).sum(-1) - 0.5 * (((jnp.asarray(y) - z @ jnp.asarray(W).T) / SIGMA) ** 2).sum(-1)  # noqa: E731
    run = jax.jit(lambda z, k: langevin_sample(logp, z, k, warmup=0, draws=draws, step_size=step, mala=True))(
        jnp.asarray(z0), jax.random.PRNGKey(2))
    return np.swapaxes(np.asarray(run["draws"])[:, :, 0], 0, 1)


@pytest.mark.slow  # ~20 s; the exact-ratio tests above are what catch a dropped proposal term
@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_mala_at_a_large_fixed_step_keeps_the_exact_posterior(backend):
    """At a step where unadjusted Langevin inflates the variance by ~30%, MALA's draws match the
    exact posterior mean and variance within 4 Monte Carlo standard errors (ArviZ's mcse).
    Measured: kills a dropped forward term in both backends and a dropped backward term in NumPyro,
    not the dropped backward term in Pyro (the error hides within 4 MCSE for that seed)."""
    import arviz as az
    from helpers import COVARIANCE, PRECISION

    y = np.array([[1.0, -0.5, 2.0, 0.3, 1.5]], np.float32)
    draws = fixed_step_chains(backend, y, 4000, 0.45)[:, 200:]
    mean = np.linalg.solve(PRECISION, W.T @ y[0].astype(np.float64) / SIGMA**2)
    squared = (draws - mean) ** 2
    mcse_mean = az.mcse(az.convert_to_dataset(draws), method="mean")["x"].values
    mcse_var = az.mcse(az.convert_to_dataset(squared), method="mean")["x"].values
    assert np.all(np.abs(draws.mean((0, 1)) - mean) < 4 * mcse_mean), (draws.mean((0, 1)), mean, mcse_mean)
    assert np.all(np.abs(squared.mean((0, 1)) - np.diag(COVARIANCE)) < 4 * mcse_var), (squared.mean((0, 1)), mcse_var)
