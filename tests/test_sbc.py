"""Simulation-based calibration (Talts et al. 2018) of the langevin kernels (bench/sbc.py): on a tiny
non-conjugate model (z in R^2, 16 tokens of vocabulary 8 through a fixed random softmax decoder)
the rank of the true z among the kernel's draws of p(z | x) is uniform (chi-square, N = 1000
replications as one batch, L = 19 draws thinned by 10, 10 bins, alpha 0.01 Bonferroni over the two
coordinates) for every real kernel, and is not for a kernel broken on purpose here (the library is
untouched: bench/sbc.py recompiles a copy of the library function with one line changed).
All at a fixed seed, so a result is a fact of this code, not a coin flip each run.
"""
from __future__ import annotations

import pytest
from helpers import load_bench


@pytest.fixture(scope="module")
def sbc():
    return load_bench("sbc")


@pytest.mark.slow
@pytest.mark.parametrize("backend, kernel", [("pyro", "mala"), ("pyro", "hmc"), ("numpyro", "mala"),
                                             ("numpyro", "hmc"), ("numpyro", "nuts")])
def test_the_real_kernels_pass_sbc(sbc, backend, kernel, jax_caches):
    result = sbc.sbc(backend, kernel)
    assert result["passed"], sbc.histogram(result)


@pytest.mark.slow
@pytest.mark.parametrize("backend, kernel, variant", [
    ("pyro", "mala", "no-proposal-correction"), ("numpyro", "mala", "no-proposal-correction"),
    ("pyro", "hmc", "no-kinetic-energy"), ("pyro", "mala", "unadjusted")])
def test_a_broken_acceptance_ratio_fails_sbc(sbc, backend, kernel, variant, jax_caches):
    result = sbc.sbc(backend, kernel, variant)
    assert not result["passed"] and result["p_min"] < 1e-4, sbc.histogram(result)


@pytest.mark.slow
@pytest.mark.parametrize("backend, kernel", [("pyro", "mala"), ("pyro", "hmc")])
def test_a_halved_gradient_is_corrected_by_the_metropolis_step(sbc, backend, kernel):
    """A wrong gradient only changes the proposal: MALA's ratio uses the same (wrong) drift both
    ways and leapfrog with any position-dependent force stays reversible and volume-preserving,
    so the chain still targets p(z | x) (slower). SBC must not flag it; what it must flag is a
    wrong ratio (above)."""
    result = sbc.sbc(backend, kernel, "half-gradient")
    assert result["passed"], sbc.histogram(result)


@pytest.mark.slow
def test_sticky_draws_fail_sbc_so_the_thinning_matters(sbc):
    """HMC's kept draws thinned by 2 instead of 10 are autocorrelated: the histogram turns U-shaped
    and SBC rejects a correct kernel; the thinning of the settings is what makes the passes above mean
    something, and the tests above would read a broken kernel's failure the same way."""
    result = sbc.sbc("pyro", "hmc", thin=2)
    assert not result["passed"], sbc.histogram(result)
