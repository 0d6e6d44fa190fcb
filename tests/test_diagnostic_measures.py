"""The numbers `ltm diagnose` reports, against known Gaussians: the KL per latent vector and the
active units of a variational q from its own parameters, the draws-based measures of MCMC beside
their noise floor, and k-hat / R-hat / ESS exactly as ArviZ computes them. Fast, no PPL."""
from __future__ import annotations

import numpy as np
import pytest

from ltm_ppl.diagnostics import (ACTIVE_THRESHOLD, active_units, chain_diagnostics, collapse, collapse_from_q,
                                 collapse_noise_floor, gaussian_kl_per_vector, psis_khat)


def known_q(B=5, n_z=3, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1.5, (B, n_z, d)), rng.normal(-0.8, 0.4, (B, n_z, d))


def test_analytic_kl_per_vector_is_the_closed_form_of_each_gaussian():
    loc, log_scale = known_q()
    kl = gaussian_kl_per_vector(loc, log_scale)
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2)/2 - 1/2, coordinate by coordinate
    s = np.exp(log_scale)
    expected = (np.log(1 / s) + (s**2 + loc**2) / 2 - 0.5).sum(-1)
    np.testing.assert_allclose(kl, expected, rtol=1e-12)
    assert kl.shape == (5, 3)
    np.testing.assert_allclose(gaussian_kl_per_vector(np.zeros((2, 3, 4)), np.zeros((2, 3, 4))), 0.0, atol=0)
    report = collapse_from_q(loc, log_scale)
    np.testing.assert_allclose(report["kl_per_latent_vector"], expected.mean(0), rtol=1e-12)
    assert report["source"] == "q"


def test_draws_kl_converges_to_the_closed_form_and_a_wrong_log_sigma_sign_fails():
    """Many draws of a known narrow Gaussian: the draws-based KL matches the closed form (error
    O(d / D) nats); with log sigma's sign flipped it would be off by 2 d |log sigma| nats."""
    loc, log_scale = known_q(B=3, n_z=2, d=4, seed=1)
    rng = np.random.default_rng(2)
    z = loc + np.exp(log_scale) * rng.standard_normal((4, 5000, *loc.shape))
    got = collapse(z)["kl_per_latent_vector"]
    np.testing.assert_allclose(got, gaussian_kl_per_vector(loc, log_scale).mean(0), atol=0.02)


def test_active_units_count_coordinates_whose_q_mean_varies_across_sequences():
    rng = np.random.default_rng(3)
    means = np.zeros((400, 2, 3))
    means[:, 0, 0] = rng.normal(0, 0.2, 400)  # variance 0.04 > 0.01: active
    means[:, 1, 2] = rng.normal(0, 0.05, 400)  # variance 0.0025 < 0.01: inactive
    means[:, 1, 1] = rng.normal(0, 1.0, 400)  # active
    active = active_units(means)
    assert active.tolist() == [[True, False, False], [False, True, False]]
    report = collapse_from_q(means[:8], np.zeros((8, 2, 3)), means)
    assert report["active_units"] == 2 and report["active_sequences"] == 400
    assert report["active_units_per_latent_vector"].tolist() == [1, 1]
    assert not active_units(means[:1]).any()  # one sequence: no variance, nothing active


def test_q_based_measures_see_no_collapse_where_the_draws_see_a_noise_floor():
    """A collapsed q (loc 0, scale 1 for every sequence) has KL 0 and no active unit from its
    parameters; its 100 draws show the noise floor the issue measured (KL ~ 1.3 per 128-dim
    vector, hundreds of 'active' units over 8 sequences)."""
    B, n_z, d, D = 8, 8, 128, 100
    loc, log_scale = np.zeros((B, n_z, d)), np.zeros((B, n_z, d))
    from_q = collapse_from_q(loc, log_scale)
    assert from_q["active_units"] == 0 and np.all(from_q["kl_per_latent_vector"] == 0)
    floor = collapse_noise_floor((1, D, B, n_z, d), seed=0)
    # per coordinate E[m^2 + s^2 - 1 - log s^2] / 2 = (1/D - 1/D + 2/D) / 2 + O(1/D^2) = 1/D
    assert floor["kl_per_latent_vector"].mean() == pytest.approx(d / D, rel=0.1)
    assert floor["kl_per_latent_vector"].min() > 0.5
    assert floor["active_units"] > 0.2 * n_z * d  # Var of a mean of 100 N(0,1) draws is 0.01, the threshold
    draws = collapse(np.random.default_rng(1).standard_normal((1, D, B, n_z, d)))
    assert draws["source"] == "draws" and abs(draws["active_units"] - floor["active_units"]) < 0.1 * n_z * d


def test_noise_floor_shrinks_with_more_draws_and_a_real_signal_stands_clear_of_it():
    rng = np.random.default_rng(4)
    loc = rng.normal(0, 1.0, (16, 2, 8))  # q means vary with variance ~1 across sequences
    z = loc + 0.5 * rng.standard_normal((2, 400, *loc.shape))
    floor = collapse_noise_floor(z.shape, seed=5)
    assert floor["active_units"] == 0 and floor["kl_per_latent_vector"].max() < 0.1
    assert collapse(z)["active_units"] == 16  # every coordinate clear of the floor
    assert collapse(z)["kl_per_latent_vector"].min() > 2.0


def test_khat_is_arviz_psislw_on_the_same_weights():
    import arviz as az

    rng = np.random.default_rng(6)
    log_w = np.concatenate([rng.standard_normal((200, 4)) * 0.3, rng.standard_t(1.5, (200, 2)) * 2], axis=1)
    report = psis_khat(log_w)
    _, expected = az.psislw(log_w.T.copy())
    np.testing.assert_allclose(report["khat"], expected, rtol=1e-12)
    assert report["threshold"] == pytest.approx(min(1 - 1 / np.log10(200), 0.7))
    assert report["share_above_threshold"] == pytest.approx(np.mean(expected > report["threshold"]))
    assert 0 < report["share_above_threshold"] < 0.5  # the heavy-tailed two of six, not the other four
    assert report["khat_max"] == pytest.approx(expected.max()) and report["num_draws"] == 200
    assert report["status"] == ["ok" if k <= report["threshold"] else "unreliable" for k in expected]


def test_constant_weights_are_exact_whatever_the_other_sequences_do():
    """q = posterior gives the same log weight for every draw of that sequence: reported exact
    (k-hat NaN), not unreliable, even beside sequences at other levels with spread weights."""
    rng = np.random.default_rng(8)
    log_w = np.stack([np.full(150, -120.0), rng.standard_normal(150) * 0.5, np.full(150, 3.0)], axis=1)
    report = psis_khat(log_w)
    assert report["exact"].tolist() == [True, False, True]
    assert report["status"][0] == report["status"][2] == "exact" and np.isnan(report["khat"][[0, 2]]).all()
    assert report["share_above_threshold"] == 0.0 and report["khat_max"] == pytest.approx(report["khat"][1])
    none_exact = psis_khat(log_w[:, 1:2])
    assert none_exact["exact"].tolist() == [False]
    # the tolerance is relative to each sequence's own scale: 1e-3 nats of spread near 0 is not
    # exact even beside a sequence at -1e5
    all_exact = psis_khat(log_w[:, [0, 2]])
    assert all_exact["khat_max"] is None and all_exact["share_above_threshold"] == 0.0
    mixed = np.stack([1e-3 * rng.standard_normal(150), np.full(150, -1e5)], axis=1)
    assert psis_khat(mixed)["exact"].tolist() == [False, True]


def test_khat_of_float32_weights_is_computed_in_float64():
    """The backends hand float32 log weights; k-hat is ArviZ's on their float64 values."""
    import arviz as az

    log_w = (np.random.default_rng(9).standard_t(2.0, (120, 4)) * 3 - 400).astype(np.float32)
    _, expected = az.psislw(log_w.T.astype(np.float64))
    np.testing.assert_allclose(psis_khat(log_w)["khat"], expected, rtol=1e-12)


def test_rhat_and_ess_are_arvizs_own():
    import arviz as az

    rng = np.random.default_rng(7)
    z = rng.standard_normal((4, 50, 2, 3))
    z[0] += 0.5  # one chain off: R-hat above 1.01 for some coordinates
    log_joint = rng.standard_normal((4, 50, 2))
    report = chain_diagnostics(z, log_joint)
    ds = az.convert_to_dataset({"z": z, "log_joint": log_joint})
    np.testing.assert_allclose(report["rhat"], az.rhat(ds)["z"].values, rtol=1e-12)
    np.testing.assert_allclose(report["ess_bulk"], az.ess(ds, method="bulk")["z"].values, rtol=1e-12)
    np.testing.assert_allclose(report["ess_tail"], az.ess(ds, method="tail")["z"].values, rtol=1e-12)
    assert report["rhat_max"] == pytest.approx(az.rhat(ds)["z"].values.max())
    assert report["share_rhat_above_limit"] == pytest.approx(np.mean(az.rhat(ds)["z"].values > 1.01))
    assert not report["converged"]
    assert ACTIVE_THRESHOLD == 0.01


def test_collapse_report_shapes_types_and_counts():
    rng = np.random.default_rng(10)
    loc, log_scale = rng.standard_normal((6, 3, 5)).astype(np.float32), (0.2 * rng.standard_normal((6, 3, 5))).astype(np.float32)
    report = collapse_from_q(loc, log_scale)
    assert report["num_units"] == 15 and report["active_sequences"] == 6
    assert report["active_units_per_latent_vector"].dtype.kind == "i"
    assert report["active_units_per_latent_vector"].shape == (3,)
    # float32 parameters: the KL is computed in float64
    exact = (0.5 * (loc.astype(np.float64) ** 2 + np.exp(2.0 * log_scale.astype(np.float64)) - 1.0
                    - 2.0 * log_scale.astype(np.float64))).sum(-1)
    np.testing.assert_allclose(gaussian_kl_per_vector(loc, log_scale), exact, rtol=1e-12)
    # a latent with one event dim: one vector, active units per coordinate
    flat = collapse_from_q(loc[:, 0], log_scale[:, 0])
    assert flat["kl_per_latent_vector"].shape == (1,) and flat["active_units_per_latent_vector"].shape == (5,)
    # two sequences are enough for a variance; one is not
    two = np.stack([np.zeros((2, 2)), np.ones((2, 2))])
    assert active_units(two).all()
    assert active_units(two[:1]).shape == (2, 2) and not active_units(two[:1]).any()
    draws = collapse(rng.standard_normal((2, 30, 6, 3, 5)))
    assert draws["active_sequences"] == 6 and draws["num_units"] == 15


def test_noise_floor_is_reproducible():
    a, b = collapse_noise_floor((1, 50, 4, 2, 8)), collapse_noise_floor((1, 50, 4, 2, 8))
    np.testing.assert_array_equal(a["kl_per_latent_vector"], b["kl_per_latent_vector"])
    c = collapse_noise_floor((1, 50, 4, 2, 8), seed=1)
    assert not np.array_equal(a["kl_per_latent_vector"], c["kl_per_latent_vector"])
