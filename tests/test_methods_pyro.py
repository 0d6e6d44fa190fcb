"""Amortized SVI, Langevin / MALA and the autoregressive baseline in Pyro: each recovers a known
posterior, each runs fit -> eval -> sample, and each refuses bad options by name."""
import functools
import json

import arviz as az
import helpers
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import TINY_TOML, host_metrics, run_cli

from ltm_ppl.inference.amortized.pyro import amortized_objective
from ltm_ppl.inference.langevin.pyro import langevin_chains
from ltm_ppl.inference.pyro_elbo import log_joint

W = torch.from_numpy(helpers.W)
SIGMA = helpers.SIGMA
PRECISION = torch.eye(4) + W.T @ W / SIGMA**2
COVARIANCE = torch.linalg.inv(PRECISION)


def posterior_mean(y):
    return torch.linalg.solve(PRECISION, (W.T @ y.T) / SIGMA**2).T


def linear_gaussian(y, size=None, subsample=None):
    """z ~ N(0, I_4), y ~ N(W z, sigma^2 I); optionally a plate of `size` subsampled to `subsample`."""
    with pyro.plate("seq", size or y.shape[0], subsample=subsample):
        z = pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, SIGMA).to_event(1), obs=y)


def exact_log_joint(y, z):
    prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    return prior + dist.Normal(z @ W.T, SIGMA).log_prob(y).sum(-1)


@pytest.mark.parametrize("batch", [1, 4])
def test_log_joint_is_the_models_joint_unscaled_even_when_subsampled(batch):
    torch.manual_seed(0)
    y, z = torch.randn(batch, 5), torch.randn(3, batch, 4)
    direct = log_joint(linear_gaussian, y, latent_value=z)
    torch.testing.assert_close(direct, exact_log_joint(y, z))
    # A plate of 100 subsampled to `batch`: Pyro's ELBOs scale by 100 / batch, Langevin must not.
    subsampled = log_joint(functools.partial(linear_gaussian, size=100, subsample=torch.arange(batch)), y, latent_value=z)
    torch.testing.assert_close(subsampled, exact_log_joint(y, z))
    scaled = pyro.poutine.trace(pyro.poutine.condition(functools.partial(linear_gaussian, size=100, subsample=torch.arange(batch)), {"z": z[0]})).get_trace(y)
    assert scaled.log_prob_sum().item() == pytest.approx(100 / batch * exact_log_joint(y, z[0]).sum().item(), rel=1e-5)


def test_mala_with_four_chains_matches_the_exact_posterior():
    torch.manual_seed(0)
    y = torch.tensor([[1.0, -0.5, 2.0, 0.3, 1.5]])
    run = langevin_chains(lambda z: log_joint(linear_gaussian, y, latent_value=z), torch.randn(4, 1, 4) * 2,
                          warmup=500, draws=3000, step_size=0.3, mala=True, target_accept=0.57)
    draws = run["z"][:, :, 0].numpy()  # [chain, draw, 4]
    accept = run["accept_prob"].mean().item()
    assert 0.4 < accept < 0.75, accept  # the warm-up adapted toward 0.57
    mean, var = posterior_mean(y)[0].numpy(), COVARIANCE.diagonal().numpy()
    mcse_mean = az.mcse(az.convert_to_dataset(draws), method="mean")["x"].values
    squared = (draws - mean) ** 2
    mcse_var = az.mcse(az.convert_to_dataset(squared), method="mean")["x"].values
    assert np.all(np.abs(draws.mean((0, 1)) - mean) < 4 * mcse_mean), (draws.mean((0, 1)), mean, mcse_mean)
    assert np.all(np.abs(squared.mean((0, 1)) - var) < 4 * mcse_var), (squared.mean((0, 1)), var, mcse_var)


def test_unadjusted_langevin_is_biased_where_mala_is_not():
    """With a large step and no Metropolis correction the stationary variance is wrong."""
    torch.manual_seed(1)
    y = torch.zeros(1, 5)
    run = langevin_chains(lambda z: log_joint(linear_gaussian, y, latent_value=z), torch.zeros(4, 1, 4),
                          warmup=0, draws=6000, step_size=0.35, mala=False)
    var = run["z"][:, 500:, 0].reshape(-1, 4).var(0)
    assert torch.all(var > 1.15 * COVARIANCE.diagonal()), var / COVARIANCE.diagonal()  # theory: 1.27-1.36


def test_amortized_guide_learns_the_posterior_mean_over_many_observations():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(5, 8)
    opt = torch.optim.Adam(encoder.parameters(), lr=0.02)

    def encode(y):
        loc, log_scale = encoder(y).chunk(2, dim=-1)
        return loc, log_scale

    for step in range(1500):
        z = torch.randn(256, 4)
        y = z @ W.T + SIGMA * torch.randn(256, 5)
        loss, _, _ = amortized_objective(linear_gaussian, encode, y, num_samples=4, beta=1.0, free_bits=0.0, n_tokens=256)
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = (torch.randn(500, 4) @ W.T) + SIGMA * torch.randn(500, 5)
    with torch.no_grad():
        loc, log_scale = encode(y)
    error = (loc - posterior_mean(y)).norm(dim=-1).sum() / posterior_mean(y).norm(dim=-1).sum()
    assert error <= 0.05, error
    # and the mean-field variances 1 / Lambda_ii, to 10%
    torch.testing.assert_close((2 * log_scale).exp().mean(0), 1 / PRECISION.diagonal(), rtol=0.1, atol=0)


def test_free_bits_and_kl_warmup_change_the_objective_not_the_bound(tiny_toml):
    from ltm_ppl.config import load_toml
    from ltm_ppl.inference.amortized.pyro import PyroAmortized

    batch = np.random.default_rng(0).integers(0, 257, size=(4, 33))
    noise = np.random.default_rng(1).standard_normal((2, 4, 4, 32)).astype(np.float32)
    results = []
    for free_bits, warmup in ((0.0, 0), (3.0, 10)):
        cfg = load_toml(tiny_toml)
        cfg.model.vocab_size, cfg.inference.method = 257, "amortized"
        cfg.inference.free_bits, cfg.inference.kl_warmup_iters = free_bits, warmup
        inference = PyroAmortized(cfg)
        with torch.no_grad():
            inference.encoder.head.weight.normal_(0, 0.05)  # a q away from the prior
        bound = inference.bound(batch, noise=noise)
        with inference.rng_scope(0):
            metrics = host_metrics(inference.step(batch))
        results.append((bound, metrics))
    (b0, m0), (b1, m1) = results
    np.testing.assert_array_equal(b0["loglik"], b1["loglik"])
    np.testing.assert_array_equal(b0["kl"], b1["kl"])
    assert m1["beta"] == pytest.approx(0.1) and m0["beta"] == 1.0
    assert m1["kl"] == pytest.approx(m0["kl"], rel=1e-5)  # the reported KL is the plain one
    assert m1["loss"] != pytest.approx(m0["loss"], rel=1e-4)


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory, tiny_toml):
    root = tmp_path_factory.mktemp("methods")
    runs = {}
    for name, args in {
        "amortized": ["--inference", "amortized"],
        "langevin": ["--inference", "langevin", "--chains", "2"],
        "none": ["--inference", "none"],
        "semi": ["--inference", "local", "--init", "amortized"],
    }.items():
        result = run_cli("fit", "--config", tiny_toml, "--iters", "6", "--out", root / name, *args)
        assert result.exit_code == 0, result.output
        runs[name] = root / name
    return runs


@pytest.mark.parametrize("name", ["amortized", "langevin", "none", "semi"])
def test_each_method_fits_evaluates_and_samples(method_runs, name):
    run = method_runs[name]
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["model"]["latent"] == (name != "none")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in metrics if "split" not in m] == list(range(1, 7))
    result = run_cli("eval", run, "--json", "--max-windows", "4", "--draws", "4")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["inference"] == config["inference"]["method"] and np.isfinite(out["nll_per_token"])
    assert out["flops_per_token"] > out["decoder_flops_per_token"] > 0
    if name == "none":
        assert out["kl_per_sequence"] == 0.0 and "exact" in out["proposal"]
    sampled = run_cli("sample", run, "--prompt", "And", "--max-tokens", "10", "--json")
    assert sampled.exit_code == 0, sampled.output
    assert json.loads(sampled.stdout.strip().splitlines()[-1])["samples"][0].startswith("And")


def test_semi_amortized_run_saves_an_encoder_and_logs_its_loss(method_runs):
    from safetensors.numpy import load_file

    from ltm_ppl.run import latest_checkpoint

    assert any(k.startswith("encoder.") for k in load_file(str(latest_checkpoint(method_runs["semi"]) / "weights.safetensors")))
    first = json.loads((method_runs["semi"] / "metrics.jsonl").read_text().splitlines()[0])
    assert "encoder_loss" in first


def test_a_run_is_evaluated_with_another_method(trained_run):
    for args in (["--inference", "langevin", "--chains", "2", "--draws", "4"], ["--steps", "32"]):
        result = run_cli("eval", trained_run, "--json", "--max-windows", "4", *args)
        assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 32


def test_methods_that_do_not_fit_the_run_are_refused(trained_run, method_runs):
    from test_cli import assert_one_line_error

    assert_one_line_error(run_cli("eval", trained_run, "--inference", "none"), "--inference none needs a decoder without latents")
    assert_one_line_error(run_cli("eval", method_runs["none"], "--inference", "langevin"), "this run has no latent")
    assert_one_line_error(run_cli("eval", trained_run, "--inference", "amortized"), "no amortized encoder")
    assert_one_line_error(run_cli("fit", "--resume", trained_run, "--inference", "langevin"), "resume it with that method")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--inference", "local", "--steps", "0"], "inference.steps (--steps) must be positive"),
        (["--inference", "langevin", "--step-size", "0"], "inference.step_size (--step-size) must be positive"),
        (["--inference", "langevin", "--target-accept", "1.5"], "inference.target_accept (--target-accept) must be in (0, 1)"),
        (["--inference", "amortized", "--free-bits", "-1"], "inference.free_bits (--free-bits) must not be negative"),
        (["--inference", "langevin", "--chains", "0"], "inference.chains (--chains) must be positive"),
    ],
)
def test_invalid_method_options_are_refused_by_name(tmp_path, args, fragment):
    from test_cli import assert_one_line_error

    assert_one_line_error(run_cli("fit", "--out", tmp_path / "run", *args), fragment)
    assert not (tmp_path / "run").exists()


def test_langevin_divergence_stops_with_the_iteration(tmp_path):
    from test_cli import assert_one_line_error

    config = tmp_path / "explode.toml"
    config.write_text(TINY_TOML.replace("lr = 3e-3", "lr = 1e30\nbeta1 = 0.0\nbeta2 = 0.0").replace("warmup_iters = 5", "warmup_iters = 0"))
    result = run_cli("fit", "--config", config, "--inference", "langevin", "--out", tmp_path / "run", "--iters", "20")
    assert_one_line_error(result, "non-finite loss at iteration", after_progress=True)
