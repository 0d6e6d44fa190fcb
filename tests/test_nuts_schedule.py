"""NUTS per (chain, sequence) pair: the "map" schedule (one pair after another, each paying for its
own tree) is only a schedule: it gives the vmapped draws; one sequence's target never changes
another's draws or cost; and --max-tree-depth caps every tree, through the method as well."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

C, B, DIM = 2, 2, 6


def logp_pair(data_b, u):
    """A Gaussian per sequence with its own mean and scales (scales 0.1..3: trees of varying depth)."""
    mean, log_scale = data_b
    return -0.5 * jnp.sum(((u - mean) / jnp.exp(log_scale)) ** 2)


def data(shift: float = 0.0):
    mean = np.array([[0.5] * DIM, [-1.0] * DIM], np.float32)  # sequences with different targets, so a
    mean[1] += shift  # mix-up of pairs and data shows; shift moves only the second sequence's target
    scales = np.linspace(0.1, 3.0, DIM, dtype=np.float32)
    log_scale = np.log(np.stack([scales, scales[::-1]]))
    return jnp.asarray(mean), jnp.asarray(log_scale)


def run(schedule, target=None, warmup=60, draws=20, max_tree_depth=10, step_size=0.3):
    from ltm_ppl.inference.langevin.blackjax_kernels import SamplerSettings, sample_pairs

    u0 = jax.random.normal(jax.random.PRNGKey(3), (C, B, DIM))
    out = sample_pairs(logp_pair, target or data(), u0, jax.random.PRNGKey(4), SamplerSettings(
        kernel="nuts", warmup=warmup, draws=draws, step_size=step_size, target_accept=0.8, leapfrog_steps=4,
        max_tree_depth=max_tree_depth, schedule=schedule))
    return jax.tree.map(np.asarray, out)


def test_mapped_pairs_give_the_vmapped_draws(jax_caches):
    """Same keys, same trees, same draws. Without warm-up: over a warm-up the two compilations'
    last-bit differences in the log density (~1e-7, measured) feed dual averaging and the trees
    and grow to O(1) after ~30 steps, as any chaotic float computation would."""
    vmapped, mapped = run("vmap", warmup=0, draws=30), run("map", warmup=0, draws=30)
    assert set(vmapped) == set(mapped)
    for name in vmapped:
        assert vmapped[name].shape == mapped[name].shape, name
        np.testing.assert_allclose(mapped[name], vmapped[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # the same tree per pair, so the same cost: and the pairs' costs differ (what lockstep would waste)
    np.testing.assert_array_equal(mapped["n_steps"], vmapped["n_steps"])
    assert len(np.unique(mapped["n_steps"].sum(0))) > 1


def test_one_sequences_target_never_moves_another_sequences_draws_or_cost(jax_caches):
    a, b = run("map", data(0.0)), run("map", data(2.0))
    np.testing.assert_array_equal(a["draws"][:, :, 0], b["draws"][:, :, 0])
    np.testing.assert_array_equal(a["n_steps"][:, :, 0], b["n_steps"][:, :, 0])
    np.testing.assert_array_equal(a["step_size"][:, 0], b["step_size"][:, 0])
    assert not np.allclose(a["draws"][:, :, 1], b["draws"][:, :, 1])


def test_the_tree_depth_cap_is_honoured(jax_caches):
    """A step size far too small for the target (no warm-up) wants deep trees: uncapped they go past
    2 doublings, capped at 2 none does, and each step costs at most 2^2 - 1 leapfrog steps."""
    free = run("map", warmup=0, draws=10, step_size=0.02)
    assert free["tree_depth"].max() > 2
    capped = run("map", warmup=0, draws=10, step_size=0.02, max_tree_depth=2)
    assert capped["tree_depth"].max() == 2 and capped["n_steps"].max() <= 3


def test_the_method_passes_max_tree_depth_to_nuts(jax_caches):
    """`--max-tree-depth` through the langevin method (NumPyro): the sample stats' tree_depth, as
    written to the NetCDF, never exceeds it."""
    from test_mcmc_kernels import CHAINS, observations, sampler

    inference = sampler("numpyro", "nuts", step_size=0.02, max_tree_depth=3)
    with inference.rng_scope(0):
        post = inference.posterior(observations(), 0, 10, CHAINS)
    assert post["tree_depth"].max() == 3  # the cap is reached ...
    assert post["n_steps"].max() <= 7  # ... and never passed


def test_sampler_settings_refuse_an_unknown_kernel_or_schedule():
    from ltm_ppl.inference.langevin.blackjax_kernels import SamplerSettings

    ok = dict(kernel="hmc", warmup=0, draws=1, step_size=0.1, target_accept=0.8, leapfrog_steps=4)
    assert SamplerSettings(**ok).schedule == "vmap"
    with pytest.raises(ValueError, match="kernel must be one of"):
        SamplerSettings(**ok | {"kernel": "mala"})  # MALA is langevin_sample's, not blackjax's
    with pytest.raises(ValueError, match="schedule must be one of"):
        SamplerSettings(**ok | {"schedule": "pmap"})
