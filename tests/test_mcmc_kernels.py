"""`--inference langevin --kernel mala|hmc|nuts` on the linear-Gaussian posterior, in both backends.

The model z ~ N(0, I_4), y ~ N(W z, sigma^2 I_5) (helpers.W, SIGMA) is injected into the method
(the generic base runs it on a LatentModel); its posterior N(Sigma W^T y / sigma^2, Sigma) is
known. Every kernel must recover its mean and variance within Monte Carlo error (error bars from
ArviZ's ESS of the very draws), the backends must agree with each other, one sequence's data must
not move another sequence's draws, adaptation must stop after warm-up, and HMC's sample stats must
be what ArviZ's plots read.
"""
import arviz as az
import helpers
import numpy as np
import pytest
from test_bounds_closed_form import numpyro_model, pyro_model

B = 2
CHAINS = 4
RUNS = {  # (backend, kernel, init) -> (warm-up, draws)
    ("pyro", "mala", "prior"): (200, 1000),
    ("pyro", "hmc", "prior"): (60, 200),
    ("pyro", "hmc", "local"): (60, 200),
    ("numpyro", "mala", "local"): (200, 1000),
    ("numpyro", "hmc", "local"): (60, 200),
    ("numpyro", "nuts", "prior"): (60, 200),
}


def observations(shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    y = rng.standard_normal((B, 4)) @ helpers.W.T + helpers.SIGMA * rng.standard_normal((B, 5))
    y[1] += shift  # only the second sequence's data
    return y.astype(np.float32)


def exact_mean(y):
    return (helpers.COVARIANCE @ helpers.W.T.astype(np.float64) @ y.T.astype(np.float64)).T / helpers.SIGMA**2


def sampler(backend: str, kernel: str, init: str = "prior", **inference):
    from ltm_ppl.config import RunConfig
    from ltm_ppl.inference import create
    from ltm_ppl.inference.latent_model import LatentModel

    cfg = RunConfig()
    cfg.train.backend, cfg.train.device = backend, "cpu"
    inf = cfg.inference
    inf.method, inf.kernel, inf.init, inf.step_size, inf.leapfrog_steps = "langevin", kernel, init, 0.3, 4
    inf.target_accept = 0.57 if kernel == "mala" else 0.8
    for name, value in inference.items():
        setattr(inf, name, value)
    return create(cfg, model=LatentModel(pyro_model() if backend == "pyro" else numpyro_model(), event_shape=(4,)))


@pytest.fixture(scope="module")
def posteriors(jax_caches):
    """Posterior draws of each (backend, kernel, init) of RUNS that a test asks for, computed once."""
    cache = {}

    def get(backend, kernel, init="prior"):
        if (backend, kernel, init) not in cache:
            warmup, draws = RUNS[(backend, kernel, init)]
            inference = sampler(backend, kernel, init)
            with inference.rng_scope(0):
                cache[(backend, kernel, init)] = inference.posterior(observations(), warmup, draws, CHAINS)
        return cache[(backend, kernel, init)]

    return get


def moments_with_errors(z):
    """Per-coordinate mean, variance and their Monte Carlo standard errors from the ESS of z [C, D, B, 4]."""
    ess = az.ess(az.convert_to_dataset({"z": z}))["z"].values  # [B, 4]
    ess_sq = az.ess(az.convert_to_dataset({"z": (z - z.mean((0, 1))) ** 2}))["z"].values
    flat = z.reshape(-1, *z.shape[2:]).astype(np.float64)
    mean, var = flat.mean(0), flat.var(0)
    return mean, var, np.sqrt(var / ess), np.sqrt(((flat - mean) ** 2).var(0) / ess_sq)


PARAMS = [pytest.param(*key, marks=pytest.mark.slow) if key[1] == "nuts" else key for key in RUNS]


@pytest.mark.parametrize("backend, kernel, init", PARAMS)
def test_every_kernel_recovers_the_linear_gaussian_posterior(posteriors, backend, kernel, init):
    post = posteriors(backend, kernel, init)
    assert post["z"].shape == (CHAINS, RUNS[(backend, kernel, init)][1], B, 4)
    mean, var, mean_se, var_se = moments_with_errors(post["z"])
    truth_mean, truth_var = exact_mean(observations()), np.diag(helpers.COVARIANCE)
    assert np.all(np.abs(mean - truth_mean) <= 5 * mean_se + 1e-3), (mean, truth_mean, mean_se)
    assert np.all(np.abs(var - truth_var) <= 5 * var_se + 1e-3), (var, truth_var, var_se)
    assert np.all(mean_se < 0.08)  # enough effective draws for the check to have teeth
    assert 0.3 < post["accept_prob"].mean() < 1.0
    if kernel != "mala":
        assert {"energy", "diverging", "n_steps"} <= set(post) and not post["diverging"].any()
    assert ("tree_depth" in post) == (kernel == "nuts")
    assert post["gradient_evaluations"].shape == (CHAINS, B) and post["gradient_evaluations"].min() > 0


def test_the_two_backends_agree_on_the_posterior(posteriors):
    """Pyro's torch HMC and NumPyro's blackjax HMC (both preconditioned by a local q) against each
    other: same output keys, means within their joint Monte Carlo error."""
    a, b = posteriors("pyro", "hmc", "local"), posteriors("numpyro", "hmc", "local")
    assert set(a) == set(b)
    ma, _, sa, _ = moments_with_errors(a["z"])
    mb, _, sb, _ = moments_with_errors(b["z"])
    assert np.all(np.abs(ma - mb) <= 5 * np.hypot(sa, sb) + 1e-3)
    ea, eb = a["gradient_evaluations"], b["gradient_evaluations"]
    assert ea.min() == ea.max() == eb.min() == eb.max() == 1 + (60 + 200) * 4  # L gradients per HMC step


@pytest.mark.parametrize("backend, kernel", [("pyro", "mala"), ("pyro", "hmc"), ("numpyro", "mala"), ("numpyro", "hmc")])
def test_one_sequences_data_never_moves_another_sequences_draws(backend, kernel, jax_caches):
    """A step size too large to keep (no warm-up) makes rejections frequent: a kernel that
    accepted or rejected sequences jointly would move sequence 0 when sequence 1 changes."""
    inference = sampler(backend, kernel, step_size=0.33 if kernel == "hmc" else 0.45)
    draws = []
    for shift in (0.0, 0.5):
        with inference.rng_scope(1):
            draws.append(inference.posterior(observations(shift), 0, 40, 2))
    assert draws[0]["accept_prob"].mean() < 0.8  # rejections happen
    np.testing.assert_array_equal(draws[0]["z"][:, :, 0], draws[1]["z"][:, :, 0])
    np.testing.assert_array_equal(draws[0]["step_size"][:, 0], draws[1]["step_size"][:, 0])
    assert not np.allclose(draws[0]["z"][:, :, 1], draws[1]["z"][:, :, 1])  # the changed sequence did move


@pytest.mark.parametrize("backend, kernel", [("pyro", "mala"), ("pyro", "hmc"), ("numpyro", "mala"), ("numpyro", "hmc")])
def test_adaptation_is_frozen_after_warmup(backend, kernel, jax_caches):
    """The adapted step size is the same whether 10 or 40 draws follow the warm-up, and without
    warm-up (or, for HMC, one too short to adapt) it stays at --step-size through every draw."""
    inference = sampler(backend, kernel)
    sizes = []
    for draws in (10, 40):
        with inference.rng_scope(2):
            sizes.append(inference.posterior(observations(), 60, draws, 2)["step_size"])
    np.testing.assert_allclose(sizes[0], sizes[1], rtol=1e-6)
    assert not np.allclose(sizes[0], 0.3)  # the warm-up did adapt
    frozen = sampler(backend, kernel, warmup=0)
    with frozen.rng_scope(2):
        post = frozen.posterior(observations(), 0, 40, 2)
    np.testing.assert_allclose(post["step_size"], 0.3, rtol=1e-6)
    if kernel == "hmc":
        with inference.rng_scope(2):
            np.testing.assert_allclose(inference.posterior(observations(), 10, 5, 2)["step_size"], 0.3, rtol=1e-6)


def test_warmup_flag_sets_the_warmup_and_steps_fit_the_local_start(jax_caches):
    """With --warmup W the interface's steps are only the local q's fast steps: the warm-up (and
    so the gradient count) follows W, whatever steps says."""
    inference = sampler("pyro", "hmc", "local", warmup=15)
    with inference.rng_scope(0):
        post = inference.posterior(observations(), 7, 10, 2)
    assert np.all(post["gradient_evaluations"] == 1 + (15 + 10) * 4)


def test_arviz_reads_the_hmc_sample_stats(posteriors, tmp_path):
    """az.summary, plot_trace, plot_rank on the InferenceData as written, and az.plot_energy per
    sequence; the NetCDF keeps ArviZ's names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ltm_ppl.diagnostics import inference_data

    idata = inference_data("langevin", posteriors("numpyro", "hmc", "local"))
    idata.to_netcdf(str(tmp_path / "hmc.nc"))
    idata = az.from_netcdf(str(tmp_path / "hmc.nc"))
    assert {"energy", "diverging", "n_steps", "log_joint", "accept_prob", "step_size"} <= set(idata.sample_stats.data_vars)
    assert idata.sample_stats["energy"].dims == ("chain", "draw", "seq")
    summary = az.summary(idata)
    assert len(summary) == B * 4 and np.all(summary["r_hat"] < 1.1)
    az.plot_trace(idata)
    az.plot_rank(idata)
    az.plot_energy(idata.sel(seq=1))
    plt.close("all")


def test_the_convergence_rule():
    from ltm_ppl.diagnostics import converged

    rhat, ess = np.full((2, 100), 1.0), np.full((2, 100), 500.0)
    lj_rhat, lj_ess = np.ones(2), np.full(2, 500.0)
    assert converged(rhat, ess, lj_rhat, lj_ess)["converged"]
    rhat[1, 0] = np.nan  # 1% of one sequence's coordinates fail: still converged
    assert converged(rhat, ess, lj_rhat, lj_ess)["converged"]
    ess[1, 1] = 399.0  # 2%: not
    verdict = converged(rhat, ess, lj_rhat, lj_ess)
    assert not verdict["converged"] and list(verdict["sequences_converged"]) == [True, False]
    ess[1, 1] = 500.0
    assert not converged(rhat, ess, lj_rhat, np.array([500.0, 399.0]))["converged"]  # the log joint's ESS
    assert not converged(rhat, ess, np.array([1.0, 1.02]), lj_ess)["converged"]  # the log joint's R-hat


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["eval", "{run}", "--inference", "langevin", "--kernel", "gibbs"],
         "inference.kernel (--kernel) must be one of mala, hmc, nuts, got 'gibbs'"),
        (["eval", "{run}", "--inference", "langevin", "--leapfrog-steps", "0"],
         "inference.leapfrog_steps (--leapfrog-steps) must be positive"),
        (["eval", "{run}", "--inference", "langevin", "--draws", "0"], "inference.draws (--draws) must be positive"),
        (["eval", "{run}", "--inference", "langevin", "--target-accept", "1.0"],
         "inference.target_accept (--target-accept) must be in (0, 1)"),
        (["eval", "{run}", "--inference", "langevin", "--warmup", "-1"], "inference.warmup (--warmup) must not be negative"),
        (["diagnose", "{run}", "--inference", "langevin", "--kernel", "hmc", "--leapfrog-steps", "-2"],
         "inference.leapfrog_steps (--leapfrog-steps) must be positive"),
        (["diagnose", "{run}", "--inference", "langevin", "--kernel", "nuts"], "--kernel nuts runs on --backend numpyro only"),
        (["diagnose", "{run}", "--inference", "langevin", "--kernel", "nuts", "--backend", "numpyro", "--max-tree-depth", "0"],
         "inference.max_tree_depth (--max-tree-depth) must be in 1..20, got 0"),
        (["eval", "{run}", "--inference", "langevin", "--kernel", "nuts", "--backend", "numpyro", "--max-tree-depth", "21"],
         "inference.max_tree_depth (--max-tree-depth) must be in 1..20, got 21"),
        (["eval", "{run}", "--inference", "langevin", "--init", "amortized"], "no amortized encoder"),
    ],
)
def test_bad_sampler_options_are_one_error_line(trained_run, tmp_path, args, fragment):
    from test_cli import assert_one_line_error

    assert_one_line_error(helpers.run_cli(*[a.format(run=trained_run) for a in args], *(
        ["--out", tmp_path / "d"] if args[0] == "diagnose" else [])), fragment)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--kernel", "nuts"], "--kernel nuts is for eval / diagnose; fit takes mala or hmc"),
    (["--init", "amortized"], "--init amortized needs a trained encoder"),
])
def test_fit_refuses_nuts_and_an_untrained_encoder_before_writing(train_toml, tmp_path, args, fragment):
    from test_cli import assert_one_line_error

    out = tmp_path / "run"
    assert_one_line_error(helpers.run_cli("fit", "--config", train_toml, "--inference", "langevin", *args, "--out", out),
                          fragment)
    assert not out.exists() and not any(tmp_path.iterdir())


def test_fit_and_diagnose_with_hmc_from_a_local_start(trained_run, train_toml, tmp_path):
    """`fit --kernel hmc` trains (its FLOPs count L gradients per step); `diagnose --kernel hmc
    --init local --warmup` writes the energy plot, HMC sample stats, the cost and the verdict."""
    import json

    from ltm_ppl.config import load_toml
    from ltm_ppl.flops import decoder_forward
    from ltm_ppl.inference import training_flops_per_token

    run = tmp_path / "hmc"
    result = helpers.run_cli("fit", "--config", train_toml, "--inference", "langevin", "--kernel", "hmc",
                             "--leapfrog-steps", "3", "--chains", "2", "--iters", "3", "--out", run)
    assert result.exit_code == 0, result.output
    cfg = load_toml(train_toml)
    cfg.inference.method, cfg.inference.chains = "langevin", 2
    mala = training_flops_per_token(cfg)
    cfg.inference.kernel, cfg.inference.leapfrog_steps = "hmc", 3
    hmc = training_flops_per_token(cfg)
    slow = 3 * decoder_forward(cfg.model) * 2  # the slow step of 2 chains, shared
    assert hmc - slow == pytest.approx(3 * (mala - slow))  # 3 gradient evaluations per step instead of 1
    out = tmp_path / "diag"
    result = helpers.run_cli("diagnose", trained_run, "--inference", "langevin", "--kernel", "hmc", "--leapfrog-steps", "2",
                             "--init", "local", "--steps", "5", "--warmup", "20", "--sequences", "2", "--chains", "2",
                             "--draws", "30", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])["methods"]["langevin"]
    assert report["kernel"] == "hmc" and report["init"] == "local" and report["warmup"] == 20
    assert report["gradient_evaluations"] == 1 + (20 + 30) * 2
    assert report["verdict"].startswith(("converged", "NOT converged")) and "R-hat <= 1.01" in report["verdict"]
    assert "sequences_converged" in report["chains_diagnostics"]
    assert {"langevin_energy.png", "langevin_rank.png", "langevin.nc"} <= {p.name for p in out.iterdir()}
    assert {"energy", "diverging"} <= set(az.from_netcdf(str(out / "langevin.nc")).sample_stats.data_vars)


@pytest.mark.parametrize("init", ["amortized", "local", "prior"])
def test_the_chains_start_q_is_the_same_in_both_backends(init, torch_one_thread, jax_caches):
    """The q whose draws start the chains and whose scale preconditions them: the encoder's
    (amortized) or the prior, the same on the tiny LTM with the same random weights in both
    backends; a local fit (its noise differs between backends) leaves the prior."""
    import jax
    from helpers import random_weights, tiny_cfg

    from ltm_ppl.inference import create

    starts = {}
    tokens = np.random.default_rng(0).integers(0, 64, (3, 17))
    for backend in ("pyro", "numpyro"):
        inference = create(tiny_cfg("langevin", backend, init=init, chains=2, draws=2, fast_lr=0.1))
        if backend == "pyro":
            weights = random_weights({k: v.shape for k, v in inference.weights().items()}, seed=3)
        inference.load_weights(weights)
        if backend == "pyro":
            loc, scale = inference.start(inference.tensor(tokens), 0 if init == "local" else 5)
            if init == "local":  # fitted by fast steps, it leaves the prior
                fitted_loc, fitted_scale = inference.start(inference.tensor(tokens), 5)
                assert np.abs(fitted_loc.numpy()).max() > 0.05 and np.all(fitted_scale.numpy() != 1)
        else:
            loc, scale = inference.programs.start(inference.params, inference.tensor(tokens), jax.random.PRNGKey(0),
                                                  0 if init == "local" else 5)
        starts[backend] = np.asarray(loc), np.asarray(scale)
    for a, b in zip(starts["pyro"], starts["numpyro"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    loc, scale = starts["pyro"]
    if init == "amortized":
        assert np.abs(loc).max() > 0.05 and np.abs(np.log(scale)).max() > 0.05  # the encoder's q, not the prior
    else:  # prior; and local with 0 fast steps is the prior too
        assert np.all(loc == 0) and np.all(scale == 1)
