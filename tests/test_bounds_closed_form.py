"""The reported bounds against a closed form, through the very function `ltm eval` uses.

The linear-Gaussian model z ~ N(0, I_4), y ~ N(W z, sigma^2 I_5) has the exact evidence
log p(y) = log N(y; 0, W W^T + sigma^2 I). It is injected into the `local` method of each backend
(the generic base runs any method on a LatentModel), and evaluate.corpus_bound bounds it as it
bounds a token split. Over R seeds (fresh noise in the fast steps and in the estimate):
E[ELBO] <= E[IWAE_K] <= log p(y), E[IWAE_K] non-decreasing in K, each with a 4-standard-error
margin; IWAE_K >= the sampled-KL ELBO of the same draws, draw by draw; the analytic KL equals a
Monte Carlo estimate of E_q[log q - log p]. A KL added instead of subtracted, or IWAE without its
`- log K`, fails these.
"""
import helpers
import numpy as np
import pytest

from ltm_ppl.evaluate import corpus_bound, iwae_terms

R = 12  # seeds
B = 6  # sequences
STEPS = 30  # fast steps fitting q
KS = (1, 16, 256)


def pyro_model():
    """The linear-Gaussian model of test_methods_pyro.py (the one the Langevin tests use)."""
    from test_methods_pyro import linear_gaussian

    return linear_gaussian


def numpyro_model():
    """Its NumPyro twin, from test_methods_numpyro.py."""
    from test_methods_numpyro import linear_gaussian

    return linear_gaussian


def exact_log_evidence(y: np.ndarray) -> np.ndarray:
    """log N(y_i; 0, W W^T + sigma^2 I) per sequence."""
    cov = helpers.W.astype(np.float64) @ helpers.W.T + helpers.SIGMA**2 * np.eye(5)
    _, logdet = np.linalg.slogdet(cov)
    quad = np.einsum("bi,ij,bj->b", y, np.linalg.inv(cov), y)
    return -0.5 * (quad + logdet + 5 * np.log(2 * np.pi))


@pytest.fixture(scope="module", params=["pyro", "numpyro"])
def linear_gaussian(request):
    """(inference object of `local` on the injected model, data [B, 5], exact log p(y) [B])."""
    from ltm_ppl.config import RunConfig
    from ltm_ppl.inference import create
    from ltm_ppl.inference.latent_model import LatentModel

    cfg = RunConfig()
    cfg.train.backend, cfg.train.device = request.param, "cpu"
    cfg.inference.method, cfg.inference.fast_lr = "local", 0.5
    fn = pyro_model() if request.param == "pyro" else numpyro_model()
    inference = create(cfg, model=LatentModel(fn, event_shape=(4,)))
    rng = np.random.default_rng(0)
    z = rng.standard_normal((B, 4))
    y = (z @ helpers.W.T + helpers.SIGMA * rng.standard_normal((B, 5))).astype(np.float32)
    return inference, y, exact_log_evidence(y.astype(np.float64))


def bound_totals(inference, y, kind: str, K: int) -> np.ndarray:
    """The bound summed over the sequences, one per seed, as corpus_bound reports it."""
    totals = []
    for seed in range(R):
        r = corpus_bound(inference, [y], STEPS, K, seed=seed, kind=kind)
        totals.append(-r["nll_per_token"] * r["num_tokens"])
    return np.asarray(totals)


def se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x)))


def test_elbo_below_iwae_below_the_evidence_and_iwae_grows_with_k(linear_gaussian):
    inference, y, log_p = linear_gaussian
    evidence = float(log_p.sum())
    elbo = bound_totals(inference, y, "elbo", 1)
    iwae = {K: bound_totals(inference, y, "iwae", K) for K in KS}
    for K in KS:
        margin = 4 * np.hypot(se(elbo), se(iwae[K]))
        assert elbo.mean() <= iwae[K].mean() + margin, (K, elbo.mean(), iwae[K].mean(), margin)
        assert iwae[K].mean() <= evidence + 4 * se(iwae[K]), (K, iwae[K].mean(), evidence)
    for small, large in zip(KS, KS[1:]):
        margin = 4 * np.hypot(se(iwae[small]), se(iwae[large]))
        assert iwae[small].mean() <= iwae[large].mean() + margin, (small, large)
    # Not vacuous: the bounds are close to the evidence and the gap closes with K.
    assert evidence - elbo.mean() < 4.0 * B and evidence - iwae[256].mean() < evidence - iwae[1].mean()


def test_iwae_is_at_least_the_sampled_elbo_of_the_same_draws(linear_gaussian):
    inference, y, _ = linear_gaussian
    for K in KS:
        with inference.rng_scope(K):
            iwae, sampled = iwae_terms(inference.log_weights(y, steps=STEPS, num_samples=K))
        if K == 1:
            np.testing.assert_allclose(iwae, sampled, rtol=0, atol=1e-4)
        else:
            assert np.all(iwae >= sampled - 1e-4) and np.any(iwae > sampled + 1e-3)
        r = corpus_bound(inference, [y], STEPS, K, seed=K, kind="iwae")
        assert r["nll_per_token"] <= r["sampled_elbo_nll_per_token"] + 1e-6


def test_analytic_kl_equals_a_monte_carlo_estimate(linear_gaussian):
    """The KL of `bound` (the q fixed by injected fast-step noise) against E_q[log q(z) - log p(z)]
    from numpy draws of the same q (loc, log_scale from the method's proposal)."""
    inference, y, _ = linear_gaussian
    rng = np.random.default_rng(1)
    fast_noise = rng.standard_normal((STEPS, 1, B, 4)).astype(np.float32)
    kl = inference.bound(y, steps=STEPS, num_samples=1, fast_noise=fast_noise)["kl"]
    loc, log_scale = (np.asarray(a, np.float64) for a in inference.proposal(inference.tensor(y), STEPS, fast_noise=fast_noise)[:2])
    assert np.abs(loc).max() > 0.1 and log_scale.max() < -0.3  # a q away from the prior: the KL has teeth
    eps = rng.standard_normal((4000, B, 4))
    z = loc + np.exp(log_scale) * eps
    log_q = (-0.5 * eps**2 - log_scale - 0.5 * np.log(2 * np.pi)).sum(-1)
    log_prior = (-0.5 * z**2 - 0.5 * np.log(2 * np.pi)).sum(-1)
    diff = log_q - log_prior  # [draws, B]
    mc, mc_se = diff.mean(0), diff.std(0, ddof=1) / np.sqrt(len(diff))
    assert np.all(np.abs(kl - mc) <= 4 * mc_se + 1e-3), (kl, mc, mc_se)


def test_posterior_reports_the_draws_of_q_and_its_parameters(linear_gaussian):
    """Variational `posterior`: z [1, D, B, 4] drawn from N(loc, exp(log_scale)^2), log_q their
    density under it, and log_joint the model's, in both backends (diagnostics read loc, log_scale)."""
    inference, y, _ = linear_gaussian
    with inference.rng_scope(3):
        post = inference.posterior(y, STEPS, 400)
    z, loc, log_scale = post["z"].astype(np.float64), post["loc"], post["log_scale"]
    assert z.shape == (1, 400, B, 4) and loc.shape == log_scale.shape == (B, 4)
    eps = (z[0] - loc) / np.exp(log_scale)
    log_q = (-0.5 * eps**2 - log_scale - 0.5 * np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(post["log_q"][0], log_q, rtol=1e-4, atol=1e-3)
    assert np.abs(eps.mean(0)).max() < 4 / np.sqrt(400) * 1.5 and np.abs(eps.std(0) - 1).max() < 0.15
    resid = (y - z[0] @ helpers.W.T.astype(np.float64)) / helpers.SIGMA
    log_joint = (-0.5 * z[0] ** 2).sum(-1) - 2 * np.log(2 * np.pi) - 0.5 * (resid**2).sum(-1) - 5 * np.log(helpers.SIGMA) \
        - 2.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(post["log_joint"][0], log_joint, rtol=1e-4, atol=1e-3)


def linear_gaussian_log_joint(y, z):
    resid = (y - z @ helpers.W.T.astype(np.float64)) / helpers.SIGMA
    return ((-0.5 * z**2).sum(-1) - 2 * np.log(2 * np.pi) - 0.5 * (resid**2).sum(-1) - 5 * np.log(helpers.SIGMA)
            - 2.5 * np.log(2 * np.pi))


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_langevin_chains_and_bound_on_the_injected_model(backend):
    """The chains hook of both backends: posterior z [C, D, B, 4] are the kept draws (their log
    joint is the model's at those z), and the bound of the Gaussian fitted to them is below the
    evidence, through corpus_bound."""
    from ltm_ppl.config import RunConfig
    from ltm_ppl.inference import create
    from ltm_ppl.inference.latent_model import LatentModel

    cfg = RunConfig()
    cfg.train.backend, cfg.train.device = backend, "cpu"
    cfg.inference.method, cfg.inference.chains, cfg.inference.draws, cfg.inference.step_size = "langevin", 2, 30, 0.3
    inference = create(cfg, model=LatentModel(pyro_model() if backend == "pyro" else numpyro_model(), event_shape=(4,)))
    rng = np.random.default_rng(0)
    y = (rng.standard_normal((B, 4)) @ helpers.W.T + helpers.SIGMA * rng.standard_normal((B, 5))).astype(np.float32)
    with inference.rng_scope(0):
        post = inference.posterior(y, 50, 40, 3)
    assert post["z"].shape == (3, 40, B, 4) and post["log_joint"].shape == post["accept_prob"].shape == (3, 40, B)
    assert post["step_size"].shape == (3, B) and 0.2 < post["accept_prob"].mean() < 1.0
    np.testing.assert_allclose(post["log_joint"], linear_gaussian_log_joint(y, post["z"].astype(np.float64)), rtol=1e-4, atol=1e-3)
    totals = np.asarray([-r["nll_per_token"] * r["num_tokens"]
                         for r in (corpus_bound(inference, [y], 50, 4, seed=s) for s in range(6))])
    evidence = float(exact_log_evidence(y.astype(np.float64)).sum())
    assert evidence - 4.0 * B < totals.mean() <= evidence + 4 * se(totals), (totals, evidence)
