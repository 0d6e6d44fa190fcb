"""Amortized SVI, Langevin / MALA, semi-amortized local and the autoregressive baseline in NumPyro:
the generic pieces recover known posteriors of a linear-Gaussian model, the JAX encoder and the
log joint match Pyro's on the same weights, every method runs fit -> eval -> sample through the
CLI, and runs without an encoder are refused by name.

Tiny shapes; jax and torch are imported inside the tests, jit compilations persist across sessions
in ~/.cache/ltm-ppl/jax-cc (as in test_numpyro_backend.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import COVARIANCE, PRECISION, SIGMA, TINY_MODEL, W, random_weights, run_cli, tiny_cfg, twin_decoders

pytestmark = pytest.mark.usefixtures("jax_caches")


def posterior_mean(y):
    return np.linalg.solve(PRECISION, W.T @ np.asarray(y, np.float64).T / SIGMA**2).T


def linear_gaussian(y, size=None):
    """The model; with `size`, a plate of `size` subsampled to the y given (scale size / len(y))."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    B = y.shape[0]
    with numpyro.plate("seq", size or B, subsample_size=B if size else None):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(4), 1.0).to_event(1))
        numpyro.sample("x", dist.Normal(z @ W.T, SIGMA).to_event(1), obs=y)


def exact_log_joint(y, z):
    """log N(z; 0, I) + log N(y; W z, sigma^2 I), by hand, in float64."""
    z = np.asarray(z, np.float64)
    resid = (np.asarray(y, np.float64) - z @ W.T.astype(np.float64)) / SIGMA
    prior = -0.5 * (z**2).sum(-1) - 2 * np.log(2 * np.pi)
    return prior - 0.5 * (resid**2).sum(-1) - 5 * np.log(SIGMA) - 2.5 * np.log(2 * np.pi)


# ----- the generic pieces on a model with a known posterior ----------------------------------
@pytest.mark.parametrize("batch", [1, 4])
def test_log_joint_is_the_models_joint_unscaled_even_when_subsampled(batch):
    import functools

    import jax.numpy as jnp
    from numpyro import handlers
    from numpyro.infer.util import log_density

    from ltm_ppl.inference.numpyro_elbo import log_joint

    rng = np.random.default_rng(batch)
    y = rng.standard_normal((batch, 5)).astype(np.float32)
    z = rng.standard_normal((3, batch, 4)).astype(np.float32)  # 3 chains
    got = np.asarray(log_joint(linear_gaussian, (jnp.asarray(y),), jnp.asarray(z)))
    assert got.shape == (3, batch)
    np.testing.assert_allclose(got, exact_log_joint(y, z), rtol=1e-5)
    total, _ = log_density(linear_gaussian, (y,), {}, {"z": z[0]})
    assert float(total) == pytest.approx(got[0].sum(), rel=1e-5)
    # A plate of 100 subsampled to `batch`: log_density scales by 100 / batch, log_joint must not.
    subsampled = functools.partial(linear_gaussian, size=100)
    got = np.asarray(log_joint(subsampled, (jnp.asarray(y),), jnp.asarray(z)))
    np.testing.assert_allclose(got, exact_log_joint(y, z), rtol=1e-5)
    total, _ = log_density(handlers.seed(subsampled, 0), (y,), {}, {"z": z[0]})
    assert float(total) == pytest.approx(100 / batch * exact_log_joint(y, z[0]).sum(), rel=1e-5)


def _mala(y, z0, key, **kw):
    import jax
    import jax.numpy as jnp

    from ltm_ppl.inference.langevin.numpyro import langevin_sample
    from ltm_ppl.inference.numpyro_elbo import log_joint

    logp = lambda z: log_joint(linear_gaussian, (jnp.asarray(y),), z)  # noqa: E731
    run = jax.jit(lambda z, k: langevin_sample(logp, z, k, **kw))
    return jax.tree.map(np.asarray, run(jnp.asarray(z0), jax.random.PRNGKey(key)))


def test_mala_with_four_chains_matches_the_exact_posterior():
    import arviz as az

    y = np.array([[1.0, -0.5, 2.0, 0.3, 1.5], [-1.0, 0.2, 0.0, 1.0, -2.0]], np.float32)
    z0 = 2 * np.random.default_rng(0).standard_normal((4, 2, 4)).astype(np.float32)
    run = _mala(y, z0, 0, warmup=500, draws=3000, step_size=0.3, mala=True, target_accept=0.57)
    assert run["draws"].shape == (3000, 4, 2, 4) and run["step_size"].shape == (4, 2)
    assert 0.45 < run["accept"].mean() < 0.7, run["accept"].mean()  # the warm-up adapted toward 0.57
    assert np.ptp(run["step_size"]) > 0  # one step size per chain and sequence
    for i, mean in enumerate(posterior_mean(y)):
        draws = np.swapaxes(run["draws"][:, :, i], 0, 1)  # [chain, draw, 4]
        squared = (draws - mean) ** 2
        mcse_mean = az.mcse(az.convert_to_dataset(draws), method="mean")["x"].values
        mcse_var = az.mcse(az.convert_to_dataset(squared), method="mean")["x"].values
        assert np.all(np.abs(draws.mean((0, 1)) - mean) < 4 * mcse_mean), (i, draws.mean((0, 1)), mean, mcse_mean)
        var = np.diag(COVARIANCE)
        assert np.all(np.abs(squared.mean((0, 1)) - var) < 4 * mcse_var), (i, squared.mean((0, 1)), var, mcse_var)
        assert np.all(mcse_mean < 0.05)  # enough draws for the comparison to have teeth


def test_unadjusted_langevin_is_biased_where_mala_is_not():
    """With a large step and no Metropolis correction the stationary variance is too large."""
    y = np.zeros((1, 5), np.float32)
    run = _mala(y, np.zeros((4, 1, 4), np.float32), 1, warmup=0, draws=6000, step_size=0.35, mala=False)
    assert np.all(run["accept"] == 1.0) and np.allclose(run["step_size"], 0.35)
    var = run["draws"][500:, :, 0].reshape(-1, 4).var(0)
    assert np.all(var > 1.15 * np.diag(COVARIANCE)), var / np.diag(COVARIANCE)  # theory: 1.27-1.36


def test_amortized_guide_learns_the_posterior_mean_over_many_observations():
    import jax
    import jax.numpy as jnp
    import optax

    from ltm_ppl.inference.amortized.numpyro import amortized_objective

    def encoder_fn(phi):
        def encode(y):
            out = y @ phi["A"].T + phi["b"]
            return out[..., :4], out[..., 4:]

        return encode

    opt = optax.adam(0.02)

    def body(carry, key):
        phi, state = carry
        data_key, noise_key, elbo_key = jax.random.split(key, 3)
        z = jax.random.normal(data_key, (256, 4))
        y = z @ W.T + SIGMA * jax.random.normal(noise_key, (256, 5))
        loss = lambda p: amortized_objective(linear_gaussian, encoder_fn(p), y, num_particles=4, rng_key=elbo_key, n_tokens=256)[0]  # noqa: E731
        updates, state = opt.update(jax.grad(loss)(phi), state)
        return (optax.apply_updates(phi, updates), state), None

    phi = {"A": 0.1 * jax.random.normal(jax.random.PRNGKey(1), (8, 5)), "b": jnp.zeros(8)}
    (phi, _), _ = jax.jit(lambda p, keys: jax.lax.scan(body, (p, opt.init(p)), keys))(phi, jax.random.split(jax.random.PRNGKey(0), 1500))
    rng = np.random.default_rng(2)
    y = (rng.standard_normal((500, 4)) @ W.T + SIGMA * rng.standard_normal((500, 5))).astype(np.float32)
    loc, log_scale = (np.asarray(a) for a in encoder_fn(phi)(jnp.asarray(y)))
    exact = posterior_mean(y)
    error = np.linalg.norm(loc - exact, axis=-1).sum() / np.linalg.norm(exact, axis=-1).sum()
    assert error <= 0.05, error
    # and the mean-field variances 1 / Lambda_ii, to 10%
    np.testing.assert_allclose(np.exp(2 * log_scale).mean(0), 1 / np.diag(PRECISION), rtol=0.1)


def test_free_bits_and_kl_warmup_change_the_objective_not_the_reported_kl():
    import jax
    import jax.numpy as jnp

    from ltm_ppl.inference.amortized.numpyro import amortized_objective
    from ltm_ppl.inference.schedules import kl_weight

    y = jnp.asarray(np.random.default_rng(3).standard_normal((6, 5)).astype(np.float32))
    encode = lambda data: (0.3 * data[..., :4], jnp.full((data.shape[0], 4), -0.5))  # noqa: E731
    key = jax.random.PRNGKey(0)
    plain, (nll, kl) = amortized_objective(linear_gaussian, encode, y, num_particles=2, rng_key=key, n_tokens=5)
    shaped, (nll2, kl2) = amortized_objective(linear_gaussian, encode, y, num_particles=2, rng_key=key, beta=0.5, free_bits=10.0, n_tokens=5)
    np.testing.assert_array_equal(np.asarray(kl), np.asarray(kl2))
    assert float(nll) == float(nll2) and np.all(np.asarray(kl) < 10.0)
    assert float(shaped) == pytest.approx(float(nll) + 0.5 * 10.0 * 6 / 5, rel=1e-6)  # every KL raised to 10 nats
    assert float(plain) == pytest.approx(float(nll) + float(kl.sum()) / 5, rel=1e-6)
    assert [kl_weight(i, 4) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0] and kl_weight(0, 0) == 1.0


# ----- the LTM pieces against Pyro on the same weights ---------------------------------------
def test_jax_encoder_matches_the_torch_encoder(torch_one_thread):
    import jax
    import jax.numpy as jnp
    import torch

    from ltm_ppl.config import ModelConfig
    from ltm_ppl.models.jax import encoder as jax_encoder
    from ltm_ppl.models.torch.encoder import Encoder

    cfg = ModelConfig(**TINY_MODEL, encoder_layers=2)
    encoder = Encoder(cfg)
    assert [(f"encoder.{k}", tuple(v.shape)) for k, v in encoder.state_dict().items()] == list(jax_encoder.param_shapes(cfg).items())
    fresh = jax_encoder.init_encoder_params(cfg, jax.random.PRNGKey(0))
    tokens = np.random.default_rng(4).integers(0, cfg.vocab_size, (3, cfg.block_size + 1))
    loc, log_scale = jax_encoder.encode(fresh, cfg, jnp.asarray(tokens))
    assert not np.any(np.asarray(loc)) and not np.any(np.asarray(log_scale))  # a fresh encoder proposes the prior

    weights = random_weights(jax_encoder.param_shapes(cfg), seed=5)
    encoder.load_state_dict({k[len("encoder."):]: torch.from_numpy(v) for k, v in weights.items()})
    with torch.no_grad():
        expected = [t.numpy() for t in encoder(torch.from_numpy(tokens))]
    got = jax_encoder.encode({k: jnp.asarray(v) for k, v in weights.items()}, cfg, jnp.asarray(tokens))
    for g, e in zip(got, expected):
        assert g.dtype == jnp.float32 and g.shape == (3, cfg.n_z, cfg.d_model)
        np.testing.assert_allclose(np.asarray(g), e, rtol=1e-4, atol=1e-5)
    assert np.std(expected[0]) > 0.1 and np.ptp(expected[0], axis=0).max() > 0.1  # sequences differ


def test_ltm_log_joint_matches_pyro(torch_one_thread):
    """The Langevin target is the same function in both backends."""
    import functools

    import jax.numpy as jnp
    import torch

    from ltm_ppl.inference import numpyro_elbo, pyro_elbo
    from ltm_ppl.models.jax import program as numpyro_model
    from ltm_ppl.models.torch import program as pyro_model

    cfg, weights, decoder, params = twin_decoders(6)
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, cfg.vocab_size, (3, cfg.block_size + 1))
    z = rng.standard_normal((2, 3, cfg.n_z, cfg.d_model)).astype(np.float32)
    with torch.no_grad():
        expected = pyro_elbo.log_joint(functools.partial(pyro_model.ltm_model, decoder), torch.from_numpy(tokens),
                                       latent_value=torch.from_numpy(z)).numpy()
    model = functools.partial(numpyro_model.ltm_model, params, cfg)
    got = np.asarray(numpyro_elbo.log_joint(model, (jnp.asarray(tokens),), jnp.asarray(z)))
    assert got.shape == expected.shape == (2, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("method,init", [("amortized", "prior"), ("local", "amortized")])
def test_encoder_methods_bound_like_pyro_on_random_weights(method, init, torch_one_thread):
    """Same weights (encoder included) and injected noise: the same per-sequence terms; and the
    semi-amortized fit with zero fast steps is the amortized bound."""
    from ltm_ppl.inference import create

    inferences = {b: create(tiny_cfg(method, b, init=init, fast_lr=0.1)) for b in ("pyro", "numpyro")}
    weights = random_weights({k: v.shape for k, v in inferences["pyro"].weights().items()}, seed=8)
    assert set(weights) == set(inferences["numpyro"].weights()) and "encoder.head.weight" in weights
    for inference in inferences.values():
        inference.load_weights(weights)
    rng = np.random.default_rng(9)
    B, steps, shape = 3, 2, (4, 32)
    batch = rng.integers(0, 64, (B, 17))
    noise = rng.standard_normal((2, B, *shape)).astype(np.float32)
    fast_noise = rng.standard_normal((steps, 1, B, *shape)).astype(np.float32)
    p, j = (inferences[b].bound(batch, steps, noise=noise, fast_noise=fast_noise) for b in ("pyro", "numpyro"))
    np.testing.assert_allclose(j["loglik"], p["loglik"], rtol=1e-4)
    np.testing.assert_allclose(j["kl"], p["kl"], rtol=1e-4)
    assert np.all(j["kl"] > 1.0)  # the encoder's q is far from the prior: the comparison has teeth
    # posterior(): draws from q with their log p(x, z) and log q(z), which Pyro's traces confirm.
    post = inferences["numpyro"].posterior(batch, steps, 3)
    assert post["z"].shape == (1, 3, B, *shape) and post["log_joint"].shape == post["log_q"].shape == (1, 3, B)
    if method == "amortized":
        import functools

        import torch

        from ltm_ppl.inference.pyro_elbo import log_weights
        from ltm_ppl.models.torch.program import amortized_guide

        pyro_inf = inferences["pyro"]
        with torch.no_grad():
            expected = log_weights(pyro_inf.model, functools.partial(amortized_guide, encoder=pyro_inf.encoder),
                                   pyro_inf.tensor(batch), num_particles=3, latent_value=torch.from_numpy(np.array(post["z"][0]))).numpy()
        np.testing.assert_allclose(post["log_joint"][0] - post["log_q"][0], expected, rtol=1e-4)
        assert inferences["numpyro"].log_weights(batch, steps, 5).shape == (5, B)
    if method == "local":
        amortized = create(tiny_cfg("amortized"))
        amortized.load_weights(weights)
        start, at_encoder = inferences["numpyro"].bound(batch, 0, noise=noise), amortized.bound(batch, noise=noise)
        np.testing.assert_allclose(start["loglik"], at_encoder["loglik"], rtol=1e-6)
        np.testing.assert_allclose(start["kl"], at_encoder["kl"], rtol=1e-6)
        assert not np.allclose(j["kl"], start["kl"], rtol=1e-3)  # the fast steps moved q


def test_load_weights_refuses_runs_without_the_encoder_and_ignores_an_unused_one():
    from ltm_ppl.errors import LtmError
    from ltm_ppl.inference import create
    from ltm_ppl.inference.weights import NO_ENCODER

    amortized = create(tiny_cfg("amortized"))
    full = amortized.weights()
    decoder_only = {k: v for k, v in full.items() if not k.startswith("encoder.")}
    with pytest.raises(LtmError, match="no amortized encoder") as info:
        amortized.load_weights(decoder_only)
    assert str(info.value) == NO_ENCODER
    with pytest.raises(LtmError, match=r"lacks tensor encoder\.head\.weight"):
        amortized.load_weights({k: v for k, v in full.items() if k != "encoder.head.weight"})
    with pytest.raises(LtmError, match=r"tensor encoder\.queries .* shape \[3, 32\].*needs \[4, 32\]"):
        amortized.load_weights(dict(full, **{"encoder.queries": np.zeros((3, 32), np.float32)}))
    semi = create(tiny_cfg("local", init="amortized"))
    with pytest.raises(LtmError, match="no amortized encoder"):
        semi.load_weights(decoder_only)
    semi.load_weights({k: v + 1 for k, v in full.items()})
    np.testing.assert_array_equal(semi.weights()["encoder.head.weight"], full["encoder.head.weight"] + 1)

    local = create(tiny_cfg("local"))  # a run trained amortized, evaluated with the local method
    local.load_weights(full)
    assert set(local.weights()) == set(decoder_only)
    with pytest.raises(LtmError, match=r"has tensor extra\.weight"):
        local.load_weights(dict(full, **{"extra.weight": full["tok_emb.weight"]}))
    with pytest.raises(LtmError, match="no latent to infer"):
        create(tiny_cfg("none")).posterior(np.zeros((1, 17), np.int64), 2, 2)


def test_langevin_posterior_and_divergence():
    """posterior(): chains x draws with their log joints, acceptance and adapted step sizes; a
    non-finite log joint gives non-finite metrics, no exception, and no update."""
    import functools

    import jax.numpy as jnp

    from ltm_ppl.errors import LtmError
    from ltm_ppl.inference import create
    from ltm_ppl.inference.numpyro_elbo import log_joint
    from ltm_ppl.models.jax.program import ltm_model

    inference = create(tiny_cfg("langevin", steps=2, chains=2, draws=1))
    batch = np.random.default_rng(10).integers(0, 64, (2, 17))
    post = inference.posterior(batch, 3, 4, num_chains=3)
    assert post["z"].shape == (3, 4, 2, 4, 32) and post["log_joint"].shape == post["accept_prob"].shape == (3, 4, 2)
    assert post["step_size"].shape == (3, 2) and np.all((post["accept_prob"] >= 0) & (post["accept_prob"] <= 1))
    model = functools.partial(ltm_model, inference.params, inference.cfg.model)
    again = np.asarray(log_joint(model, (jnp.asarray(batch, jnp.int32),), jnp.asarray(post["z"])))
    np.testing.assert_allclose(post["log_joint"], again, rtol=1e-5)  # each draw's own log joint
    inference.cfg.inference.chains = 1
    with pytest.raises(LtmError, match=r"at least 2 draws \(--chains x --draws\)"):
        inference.bound(batch, 2)
    inference.cfg.inference.chains = 2

    weights = inference.weights()
    weights["final_norm.weight"] = np.full_like(weights["final_norm.weight"], np.nan)
    inference.load_weights(weights)
    metrics = inference.step(batch)  # no exception
    assert not np.isfinite(float(metrics["loss"])) and not bool(metrics["finite"])
    after = inference.weights()
    for name, value in weights.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)  # nothing updated


# ----- every method through the CLI ----------------------------------------------------------
BASE_TOML = """
[model]
n_layer = 2
n_head = 2
d_model = 32
n_z = 4
block_size = 16

[inference]
steps = 2
eval_steps = 2
{inference}

[train]
iters = 2
batch_size = 4
lr = 0.003
warmup_iters = 1
eval_interval = 2
eval_windows = 4
checkpoint_interval = 2
device = "cpu"
backend = "numpyro"

[data]
tokenizer = "bytes"
"""

METHODS = {
    "amortized": ("amortized", "free_bits = 0.05\nkl_warmup_iters = 2"),
    "langevin": ("langevin", "chains = 2\ndraws = 2\nstep_size = 0.05"),
    "none": ("none", ""),
    "semi": ("local", 'init = "amortized"'),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    words = "in the beginning god created heaven and earth light was good day night water".split()
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("\n".join(" ".join(rng.choice(words, size=8)) + "." for _ in range(300)) + "\n")
    return path


def _last_json(result) -> dict:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def numpyro_runs(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("numpyro-methods")
    runs = {}
    for name, (method, options) in METHODS.items():
        config = root / f"{name}.toml"
        config.write_text(BASE_TOML.format(inference=options))
        summary = _last_json(run_cli("fit", "--config", config, "--inference", method, "--data", corpus, "--out", root / name, "--json"))
        assert summary["iterations"] == 2 and np.isfinite(summary["val"]["nll_per_token"])
        runs[name] = root / name
    return runs


@pytest.mark.parametrize("name", list(METHODS))
def test_each_numpyro_method_fits_evaluates_and_samples(numpyro_runs, name):
    from safetensors.numpy import load_file

    from ltm_ppl.run import latest_checkpoint

    run = numpyro_runs[name]
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["model"]["latent"] == (name != "none") and config["train"]["backend"] == "numpyro"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "split" not in r]
    assert [r["iter"] for r in train] == [1, 2]
    expected = {"amortized": {"beta", "kl"}, "langevin": {"accept", "step_size", "log_prior"}, "none": {"kl"},
                "semi": {"encoder_loss", "kl"}}[name]
    assert expected <= set(train[0]) and all(np.isfinite(v) for r in train for v in r.values() if isinstance(v, float))
    if name == "amortized":
        assert [r["beta"] for r in train] == [0.5, 1.0]
    if name == "langevin":
        assert 0 <= train[0]["accept"] <= 1 and train[0]["step_size"] > 0
    has_encoder = any(k.startswith("encoder.") for k in load_file(str(latest_checkpoint(run) / "weights.safetensors")))
    assert has_encoder == (name in ("amortized", "semi"))

    out = _last_json(run_cli("eval", run, "--json", "--max-windows", "4", "--steps", "2"))
    assert (out["backend"], out["inference"]) == ("numpyro", config["inference"]["method"])
    assert np.isfinite(out["nll_per_token"]) and out["num_tokens"] == 4 * 16
    if name == "none":
        assert out["kl_per_sequence"] == 0.0
    sampled = _last_json(run_cli("sample", run, "--prompt", "in the", "--max-tokens", "6", "--json"))
    assert sampled["samples"][0].startswith("in the") and sampled["backend"] == "numpyro"


def test_a_pyro_amortized_run_bounds_the_same_in_numpyro(tmp_path, corpus, torch_one_thread):
    from ltm_ppl.run import read_config
    from ltm_ppl.run import load_inference

    config = tmp_path / "amortized.toml"
    config.write_text(BASE_TOML.format(inference=METHODS["amortized"][1]))
    run = tmp_path / "pyro-amortized"
    _last_json(run_cli("fit", "--config", config, "--inference", "amortized", "--backend", "pyro", "--data", corpus,
                       "--out", run, "--json"))
    inferences = {}
    for backend in ("pyro", "numpyro"):
        cfg, _ = read_config(run)
        cfg.train.backend = backend
        inferences[backend] = load_inference(run, cfg)
    cfg = inferences["pyro"].cfg
    rng = np.random.default_rng(11)
    B = 4
    batch = rng.integers(0, cfg.model.vocab_size, (B, cfg.model.block_size + 1))
    noise = rng.standard_normal((3, B, cfg.model.n_z, cfg.model.d_model)).astype(np.float32)
    p, j = (inferences[b].bound(batch, 2, noise=noise) for b in ("pyro", "numpyro"))
    np.testing.assert_allclose(j["loglik"], p["loglik"], rtol=1e-4)
    np.testing.assert_allclose(j["kl"], p["kl"], rtol=1e-4, atol=1e-6)
    assert np.all(p["kl"] > 0)  # two AdamW steps moved the encoder's head off zero


def test_langevin_bound_is_the_same_in_both_backends_with_injected_randomness(torch_one_thread):
    """Same weights, same starting points, proposal noise and uniforms: the same MALA chains, the
    same fitted Gaussian and the same per-sequence bound."""
    from ltm_ppl.inference import create

    inferences = {b: create(tiny_cfg("langevin", b, chains=2, draws=3, step_size=0.05)) for b in ("pyro", "numpyro")}
    weights = random_weights({k: v.shape for k, v in inferences["pyro"].weights().items()}, seed=11)
    for inference in inferences.values():
        inference.load_weights(weights)
    rng = np.random.default_rng(12)
    B, warmup, C, shape = 3, 2, 2, (4, 32)
    batch = rng.integers(0, 64, (B, 17))
    fast_noise = (rng.standard_normal((C, B, *shape)).astype(np.float32),
                  rng.standard_normal((warmup + 3, C, B, *shape)).astype(np.float32),
                  np.log(rng.uniform(size=(warmup + 3, C, B))).astype(np.float32))
    noise = rng.standard_normal((2, B, *shape)).astype(np.float32)
    p, j = (inferences[b].bound(batch, warmup, noise=noise, fast_noise=fast_noise) for b in ("pyro", "numpyro"))
    np.testing.assert_allclose(j["loglik"], p["loglik"], rtol=1e-4)
    np.testing.assert_allclose(j["kl"], p["kl"], rtol=1e-4)


def test_local_fit_recovers_the_mean_field_optimum_of_the_correlated_model():
    """The NumPyro fast loop on the correlated linear-Gaussian model: the mean m to 1e-2 and the
    mean-field variances 1 / Lambda_ii to 5%, as the Pyro test demands."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    from ltm_ppl.config import InferenceConfig
    from ltm_ppl.inference.local.fast_fit import FastFit
    from ltm_ppl.inference.local.numpyro import fast_lrs, fit_local_posterior
    from ltm_ppl.noise import FastNoise

    W = np.array([[1.0, 0.8, 0.0, 0.0], [0.0, 1.0, 0.7, 0.0], [0.0, 0.0, 1.0, 0.6], [0.5, 0.0, 0.0, 1.0], [1, 1, 1, 1.0]], np.float32)
    sigma = 0.5
    y = (np.random.default_rng(0).standard_normal((3, 5)) * 2).astype(np.float32)
    precision = np.eye(4) + W.T @ W / sigma**2
    mean = np.linalg.solve(precision, W.T @ y.T / sigma**2).T

    def model(obs):
        with numpyro.plate("seq", obs.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
            numpyro.sample("x", dist.Normal(z @ W.T, sigma).to_event(1), obs=obs)

    cfg = InferenceConfig(fast_lr=0.1, final_lr_ratio=0.002, num_samples=64)
    fit = jax.jit(lambda lrs, key: fit_local_posterior(model, jnp.asarray(y), (4,), cfg, lrs, FastFit(FastNoise(key=key))))
    loc, log_scale = fit(jnp.asarray(fast_lrs(1500, cfg)), jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(loc), mean, atol=1e-2, rtol=0)
    np.testing.assert_allclose(np.exp(2 * np.asarray(log_scale)), np.broadcast_to(1 / np.diag(precision), (3, 4)), rtol=0.05)


def test_numpyro_local_learns_the_builtin_corpus_end_to_end(tmp_path):
    """`ltm fit --backend numpyro` on the KJV, then eval and sample of that run through click: the
    held-out bound ends well below the unigram model of the same tokens."""
    import json

    from helpers import TRAIN_TOML

    config = tmp_path / "train.toml"
    config.write_text(TRAIN_TOML)
    run = tmp_path / "run"
    fitted = run_cli("fit", "--config", config, "--backend", "numpyro", "--out", run)
    assert fitted.exit_code == 0, fitted.output
    assert "compiling the training step (NumPyro: jax.jit" in fitted.output  # issue 23: said before the wait
    result = run_cli("eval", run, "--json", "--max-windows", "32")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["backend"] == "numpyro" and out["nll_per_token"] < out["unigram_nll_per_token"] - 0.2, out
    sampled = run_cli("sample", run, "--prompt", "And God said", "--max-tokens", "20", "--json")
    assert sampled.exit_code == 0, sampled.output
    assert json.loads(sampled.stdout.strip().splitlines()[-1])["samples"][0].startswith("And God said")
