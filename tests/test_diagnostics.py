"""ArviZ diagnostics: R-hat / ESS that pass good chains and fail broken ones (NaN included),
PSIS k-hat that tells good, bad and exact proposals apart, IWAE against the ELBO, the NetCDF
layout, and `ltm eval --bound/--fixed-noise`, `ltm diagnose`, `ltm compare` end to end."""
import json
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import torch
from helpers import run_cli
from test_cli import assert_one_line_error
from test_methods_pyro import COVARIANCE, linear_gaussian, posterior_mean

from ltm_ppl.diagnostics import chain_diagnostics, khat_threshold, psis_khat
from ltm_ppl.evaluate import iwae_terms
from ltm_ppl.inference.langevin.pyro import langevin_chains
from ltm_ppl.inference.pyro_elbo import log_joint

Y = torch.tensor([[1.0, -0.5, 2.0, 0.3, 1.5]])


def chains(z0, warmup, draws, step_size, mala=True):
    torch.manual_seed(0)
    run = langevin_chains(lambda z: log_joint(linear_gaussian, Y, latent_value=z), z0, warmup, draws, step_size, mala)
    return run["z"].numpy(), run["log_joint"].numpy()


def test_mala_chains_pass_rhat_and_ess():
    z, lj = chains(torch.randn(4, 1, 4), warmup=500, draws=8000, step_size=0.3)
    report = chain_diagnostics(z, lj)
    assert report["converged"] and report["rhat_max"] < 1.01 and report["rhat_log_joint_max"] < 1.01
    assert report["ess_bulk_min"] > 800 and report["ess_tail_min"] > 800  # the stated floor: 800 of 32000 draws


def test_broken_samplers_fail_rhat():
    # step size far too large, no adaptation: nearly every proposal rejected, chains stay apart
    z, lj = chains(torch.randn(4, 1, 4) * 3, warmup=0, draws=200, step_size=3.0)
    stuck = chain_diagnostics(z, lj)
    assert not stuck["converged"] and (stuck["rhat_max"] > 1.05 or np.isnan(stuck["rhat_max"]))
    # chains started far apart, too few draws
    far = torch.tensor([-8.0, -3.0, 3.0, 8.0])[:, None, None].expand(4, 1, 4).contiguous()
    z, lj = chains(far, warmup=0, draws=30, step_size=0.05, mala=False)
    assert chain_diagnostics(z, lj)["rhat_max"] > 1.05


def test_chains_that_never_move_give_nan_rhat_counted_as_failure():
    z = np.ones((4, 50, 1, 2, 3))
    report = chain_diagnostics(z, np.zeros((4, 50, 1)))
    assert report["rhat_nan"] == 6 and report["share_rhat_above_limit"] == 1.0 and not report["converged"]


def gaussian_log_weights(scale_cov: float, num: int = 2000, seed: int = 0) -> np.ndarray:
    """log p(y, z) - log q(z), z ~ q = N(m, scale_cov * Sigma): a full-covariance guide."""
    torch.manual_seed(seed)
    q = torch.distributions.MultivariateNormal(posterior_mean(Y)[0], covariance_matrix=scale_cov * COVARIANCE)
    z = q.sample((num,))[:, None, :]  # [S, B=1, 4]
    with torch.no_grad():
        return (log_joint(linear_gaussian, Y, latent_value=z) - q.log_prob(z)).numpy()  # [S, 1]


def test_khat_separates_wide_narrow_and_exact_proposals():
    assert khat_threshold(100) == pytest.approx(0.5) and khat_threshold(10**6) == pytest.approx(0.7)
    wide = psis_khat(gaussian_log_weights(1.2))
    assert wide["khat"][0] < 0.5 and wide["status"] == ["ok"]
    narrow = psis_khat(gaussian_log_weights(0.05))
    assert narrow["khat"][0] > narrow["threshold"] and narrow["status"] == ["unreliable"]
    exact = psis_khat(gaussian_log_weights(1.0))
    assert exact["status"] == ["exact"] and exact["share_above_threshold"] == 0.0


def test_iwae_is_above_the_sampled_elbo_on_the_same_draws_and_equal_at_one(trained_run):
    from ltm_ppl.data import eval_batches, load_corpus, split_tokens
    from ltm_ppl.eval_runs import open_run

    opened = open_run(trained_run)
    tokens = split_tokens(load_corpus(opened.cfg.data.data), "val", opened.tokenizer)
    batch = next(eval_batches(tokens, opened.cfg.model.block_size, 8))
    with opened.inference.rng_scope(0):
        lw = opened.inference.log_weights(batch, steps=4, num_samples=16)
    iwae, elbo = iwae_terms(lw)
    assert np.all(np.isfinite(iwae)) and np.all(iwae >= elbo) and np.any(iwae > elbo + 1e-3)
    one, one_elbo = iwae_terms(lw[:1])
    np.testing.assert_allclose(one, one_elbo, rtol=0, atol=1e-4)


def test_eval_iwae_steps_list_and_fixed_noise(trained_run):
    result = run_cli("eval", trained_run, "--steps", "2,8", "--fixed-noise", "--max-windows", "8", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    rows = out["rows"]
    assert [(r["steps"], bool(r.get("fixed_noise"))) for r in rows] == [(2, False), (2, True), (8, False), (8, True)]
    assert all(np.isfinite(r["nll_per_token"]) for r in rows)
    assert "not a bound" in rows[1]["label"] and rows[0]["label"] == "honest bound, fresh noise"
    assert out["steps"] == 8 and not out.get("fixed_noise")  # the top level is the honest bound
    text = run_cli("eval", trained_run, "--bound", "iwae", "--samples", "8", "--max-windows", "8")
    assert text.exit_code == 0 and "iwae" in text.stdout and "sampled-KL ELBO" in text.stdout


def test_diagnose_writes_netcdf_plots_and_a_summary(trained_run, tmp_path):
    out = tmp_path / "diag"
    result = run_cli("diagnose", trained_run, "--inference", "local,langevin", "--sequences", "3", "--chains", "2",
                     "--draws", "100", "--steps", "20", "--out", out, "--json", "--no-bounds")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["methods"]) == {"local", "langevin"}
    assert not any("bounds" in r for r in summary["methods"].values())  # --no-bounds
    assert {"local.nc", "langevin.nc", "local_khat.png", "langevin_rank.png", "local_kl.png", "summary.json"} <= {p.name for p in out.iterdir()}
    chains_nc = az.from_netcdf(str(out / "langevin.nc"))
    assert chains_nc.posterior["z"].dims == ("chain", "draw", "seq", "latent", "dim")
    assert chains_nc.posterior["z"].shape == (2, 100, 3, 4, 64)
    assert {"log_joint", "accept_prob", "step_size"} <= set(chains_nc.sample_stats.data_vars)
    variational = az.from_netcdf(str(out / "local.nc"))
    assert {"log_joint", "log_weight"} <= set(variational.sample_stats.data_vars)
    assert variational.sample_stats["log_weight"].dims == ("chain", "draw", "seq")
    assert len(summary["methods"]["local"]["khat"]["khat"]) == 3
    assert len(summary["methods"]["langevin"]["collapse"]["kl_per_latent_vector"]) == 4


def test_diagnose_puts_each_methods_bounds_and_verdict_side_by_side_as_eval_computes_them(trained_run, tmp_path):
    """Issue 13: per method the ELBO and IWAE_16 of its q (langevin: the Gaussian fitted to its
    draws) in nats/token, and the convergence verdict in words; the numbers are `ltm eval`'s for
    the same method, steps, draws, chains and seed, on the same windows."""
    out = tmp_path / "diag"
    result = run_cli("diagnose", trained_run, "--inference", "local,langevin", "--sequences", "3", "--chains", "2",
                     "--draws", "100", "--steps", "10", "--out", out)
    assert result.exit_code == 0, result.output
    methods = json.loads((out / "summary.json").read_text())["methods"]
    verdict = methods["langevin"]["verdict"]
    assert verdict.startswith(("converged (", "NOT converged (")) and "R-hat max" in verdict and "ESS min" in verdict
    table = result.stdout[result.stdout.index("bounds of each method's q"):].splitlines()
    assert "ELBO" in table[1] and "IWAE_16" in table[1]
    for m, line in zip(("local", "langevin"), table[2:4]):
        b = methods[m]["bounds"]
        assert line.split()[:4] == [m, "10", f"{b['elbo_nll_per_token']:.4f}", f"{b['iwae_nll_per_token']:.4f}"]
        # IWAE_K is the tighter bound on the NLL (lower), up to K=16 Monte Carlo noise of different draws
        assert b["iwae_nll_per_token"] < b["elbo_nll_per_token"] + 0.05
    assert table[3].endswith(verdict) and table[2].endswith("-")
    for m in ("local", "langevin"):
        for kind, key in (("elbo", "elbo_nll_per_token"), ("iwae", "iwae_nll_per_token")):
            run = run_cli("eval", trained_run, "--inference", m, "--steps", "10", "--samples", "16", "--bound", kind,
                          "--chains", "2", "--max-windows", "3", "--batch-size", "3", "--seed", "0", "--json")
            assert run.exit_code == 0, run.output
            evaluated = json.loads(run.stdout.strip().splitlines()[-1])["nll_per_token"]
            assert methods[m]["bounds"][key] == pytest.approx(evaluated, rel=1e-6, abs=1e-6), (m, kind)


def test_compare_puts_an_ltm_beside_its_baseline(trained_run, method_runs_small):
    result = run_cli("compare", trained_run, method_runs_small, "--max-windows", "4", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])["rows"]
    assert [r["inference"] for r in rows] == ["local", "none"]
    assert rows[0]["num_tokens"] == rows[1]["num_tokens"] and rows[0]["flops_per_token"] > rows[1]["flops_per_token"]


@pytest.fixture(scope="module")
def method_runs_small(tmp_path_factory, train_toml):
    run = tmp_path_factory.mktemp("baseline") / "none"
    result = run_cli("fit", "--config", train_toml, "--inference", "none", "--iters", "5", "--out", run)
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["eval", "{run}", "--samples", "0"], "--samples must be a positive integer"),
        (["eval", "{run}", "--steps", "4,x"], "--steps must be a positive integer or a comma-separated list"),
        (["eval", "{run}", "--steps", "0"], "--steps must be a positive integer"),
        (["diagnose", "{run}", "--chains", "0", "--inference", "langevin"], "--chains must be a positive integer"),
        (["diagnose", "{run}", "--draws", "50"], "--draws 50 is below 100"),
        (["diagnose", "{run}", "--inference", "local,magic"], "no latent posterior for method 'magic'"),
        (["eval", "{run}", "--fixed-noise", "--inference", "langevin"], "--fixed-noise applies to --inference local"),
    ],
)
def test_bad_diagnostic_options(trained_run, args, fragment):
    assert_one_line_error(run_cli(*[a.format(run=trained_run) for a in args]), fragment)


def test_diagnose_refuses_a_run_without_latents(method_runs_small, tmp_path):
    assert_one_line_error(run_cli("diagnose", method_runs_small, "--out", tmp_path / "d"), "no latent to diagnose")
    assert not (tmp_path / "d").exists()


def test_a_split_the_corpus_lacks(tmp_path, trained_run):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("a short text\n" * 50)  # its test split is a few lines: shorter than one window
    assert_one_line_error(run_cli("eval", trained_run, "--data", corpus, "--split", "test"), "fewer than one window")


@pytest.mark.slow  # ~20 s idle, most of it jit
@pytest.mark.usefixtures("jax_caches")
def test_diagnose_with_the_numpyro_backend(trained_run, tmp_path):
    """The same diagnostics from JAX draws of a Pyro-trained run (and the amortization gap path
    refuses cleanly: this run has no encoder)."""
    out = tmp_path / "diag"
    result = run_cli("diagnose", trained_run, "--backend", "numpyro", "--inference", "local,langevin", "--sequences", "2",
                     "--chains", "2", "--draws", "100", "--steps", "10", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert np.isfinite(summary["methods"]["langevin"]["chains_diagnostics"]["rhat_log_joint_max"])
    for r in summary["methods"].values():  # the bounds through JAX too: IWAE_16 tighter than the ELBO, up to noise
        assert np.isfinite(r["bounds"]["elbo_nll_per_token"]) and r["bounds"]["iwae_nll_per_token"] < r["bounds"]["elbo_nll_per_token"] + 0.05
    assert len(summary["methods"]["local"]["khat"]["khat"]) == 2
    assert az.from_netcdf(str(out / "langevin.nc")).posterior["z"].dims == ("chain", "draw", "seq", "latent", "dim")
    assert_one_line_error(run_cli("diagnose", trained_run, "--inference", "local,amortized", "--out", tmp_path / "d2"),
                          "no amortized encoder")
    assert not (tmp_path / "d2").exists()


def test_diagnose_by_default_writes_beside_not_into_the_run(trained_run, tmp_path, monkeypatch):
    """Issue 9: eval, sample and diagnose only read a run; diagnose's default output is
    diagnostics/<run name>-<timestamp> in the current directory."""
    before = sorted((p.relative_to(trained_run), p.stat().st_mtime_ns) for p in trained_run.rglob("*"))
    monkeypatch.chdir(tmp_path)
    result = run_cli("diagnose", trained_run, "--inference", "local", "--sequences", "2", "--steps", "2", "--json", "-q")
    assert result.exit_code == 0, result.output
    out = Path(json.loads(result.stdout.strip().splitlines()[-1])["out"])
    assert out.parent == Path("diagnostics") and out.name.startswith(trained_run.name + "-")
    assert (tmp_path / out / "summary.json").is_file()
    assert sorted((p.relative_to(trained_run), p.stat().st_mtime_ns) for p in trained_run.rglob("*")) == before


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_toml):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    result = run_cli("fit", "--config", tiny_toml, "--out", run, "--iters", "4", "-q")
    assert result.exit_code == 0, result.output
    return run


def test_a_killed_diagnose_leaves_nothing_at_out_and_a_rerun_works(tiny_run, tmp_path):
    """Issue 23: diagnose builds its folder as a hidden sibling and renames it into place. Killed
    (SIGKILL) when its NetCDF and plots are written but not summary.json, it leaves no --out; the
    rerun with the same --out works and removes the dead one's hidden folder."""
    import os
    import subprocess
    import sys

    out = tmp_path / "diag"
    args = [sys.executable, "-m", "ltm_ppl", "diagnose", str(tiny_run), "--sequences", "2", "--draws", "100",
            "--no-bounds", "--out", str(out), "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1", LTM_FAULT_KILL_AT="1")  # the first durable step: summary.json
    killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    assert not out.exists()
    (stage,) = [p for p in tmp_path.iterdir() if p.name.startswith(".diag.incomplete-")]
    assert "local.nc" in {p.name for p in stage.iterdir()}  # killed mid-diagnose, after its work
    result = run_cli("diagnose", tiny_run, "--sequences", "2", "--draws", "100", "--no-bounds", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert {"local.nc", "summary.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "summary.json").read_text())["out"] == str(out)
    assert [p.name for p in tmp_path.iterdir()] == ["diag"]


def test_a_diagnose_that_fails_midway_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    from ltm_ppl import diagnostics

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(diagnostics.run, "plot_method", fail)  # the name run.py calls
    (tmp_path / "diag").mkdir()  # an empty folder of the user's: kept as it was
    with pytest.raises(KeyboardInterrupt):
        diagnostics.diagnose_run(tiny_run, diagnostics.DiagnoseSettings(sequences=2, bounds=False, out=str(tmp_path / "diag")))
    assert [p.name for p in tmp_path.iterdir()] == ["diag"] and not any((tmp_path / "diag").iterdir())
