"""The NumPyro / JAX backend: parity with the torch/Pyro backend on the same weights, one run
directory read by both backends, training, resume, import isolation, weight checks.

Tiny shapes throughout (d_model 32, 2 layers, n_z 4, block 16) so that each test takes seconds on
a 2-core CPU. jax and torch are imported inside the tests only, so collecting this module imports
neither; jit compilations persist across sessions in ~/.cache/ltm-ppl/jax-cc.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import JAX_CACHE, TINY_MODEL, random_weights, tiny_cfg, twin_decoders

pytestmark = pytest.mark.usefixtures("jax_caches")

TOML = """
[model]
n_layer = 2
n_head = 2
d_model = 32
n_z = 4
block_size = 16

[inference]
steps = 2
eval_steps = 2

[train]
iters = 4
batch_size = 4
lr = 0.003
warmup_iters = 1
eval_interval = 4
eval_windows = 8
checkpoint_interval = 4
device = "cpu"
"""


def markov_tokens(n_windows: int, block: int, vocab: int, seed: int) -> np.ndarray:
    """Windows of a learnable stream: next = 3 * prev + 1 mod vocab, 10% random tokens."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_windows, block + 1), np.int64)
    for i in range(n_windows):
        t = rng.integers(vocab)
        for j in range(block + 1):
            out[i, j] = t
            t = (3 * t + 1) % vocab if rng.random() > 0.1 else rng.integers(vocab)
    return out


# ----- parity on the same weights ------------------------------------------------------------
@pytest.mark.parametrize("latent", [True, False])
def test_decoder_token_log_probs_match_torch(latent, torch_one_thread):
    import jax.numpy as jnp
    import torch

    from ltm_ppl.config import ModelConfig
    from ltm_ppl.models.jax import decoder as jax_decoder
    from jax_token_sequence import TokenSequence as JaxTokens
    from ltm_ppl.models.torch.decoder import Decoder
    from ltm_ppl.models.torch.likelihood import TokenSequence as TorchTokens

    cfg = ModelConfig(**TINY_MODEL, latent=latent)
    decoder = Decoder(cfg)
    names = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert names == jax_decoder.param_shapes(cfg)  # canonical names, torch layouts, same order
    assert list(names) == list(jax_decoder.param_shapes(cfg))
    weights = random_weights(names, seed=1)
    decoder.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, cfg.vocab_size, (3, cfg.block_size + 1))
    z = rng.standard_normal((3, cfg.n_z, cfg.d_model)).astype(np.float32) if latent else None

    with torch.no_grad():
        logits = decoder(torch.from_numpy(tokens[:, :-1]), None if z is None else torch.from_numpy(z))
        expected = TorchTokens(logits).token_log_probs(torch.from_numpy(tokens[:, 1:])).numpy()
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    jlogits = jax_decoder.decoder_logits(params, cfg, jnp.asarray(tokens[:, :-1]), None if z is None else jnp.asarray(z))
    got = np.asarray(JaxTokens(jlogits).token_log_probs(jnp.asarray(tokens[:, 1:])))
    assert got.dtype == np.float32 and got.shape == expected.shape == (3, cfg.block_size)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert expected.std() > 0.5  # the weights are far from uniform: the comparison has teeth


def test_kv_cached_generation_matches_torch(torch_one_thread):
    """Greedy decoding through the JAX KV cache (window refills included) = torch's tokens."""
    import jax.numpy as jnp
    import torch

    from ltm_ppl.models.jax import decoder as jax_decoder, generate as jax_generate
    from ltm_ppl.models.torch.generate import generate as torch_generate

    cfg, weights, decoder, params = twin_decoders(3)
    rng = np.random.default_rng(4)
    context = rng.integers(0, cfg.vocab_size, (2, 5))
    z = rng.standard_normal((2, cfg.n_z, cfg.d_model)).astype(np.float32)
    new = 2 * cfg.block_size  # fills the window, refills from its last half, fills again
    with torch.no_grad():
        expected = torch_generate(decoder, torch.from_numpy(context), torch.from_numpy(z), new, temperature=0).numpy()
    got = jax_generate.generate(params, cfg, context, jnp.asarray(z), new, temperature=0)
    np.testing.assert_array_equal(got, expected)
    # Without the cache: the first new token past the prompt is the argmax of a full forward.
    full = jax_decoder.decoder_logits(params, cfg, jnp.asarray(context), jnp.asarray(z))
    np.testing.assert_array_equal(got[:, 0], np.asarray(full[:, -1].argmax(-1)))


@pytest.mark.parametrize("latent", [True, False])
def test_sliding_window_decoder_matches_torch(latent, torch_one_thread):
    """attention_window 5 of block 16: the same logits in both backends, and not those of full attention."""
    import jax.numpy as jnp
    import torch

    from ltm_ppl.models.jax import decoder as jax_decoder

    cfg, weights, decoder, params = twin_decoders(7, attention_window=5, latent=latent)
    rng = np.random.default_rng(8)
    tokens = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    z = rng.standard_normal((2, cfg.n_z, cfg.d_model)).astype(np.float32) if latent else None
    with torch.no_grad():
        expected = decoder(torch.from_numpy(tokens), None if z is None else torch.from_numpy(z)).numpy()
    got = np.asarray(jax_decoder.decoder_logits(params, cfg, jnp.asarray(tokens), None if z is None else jnp.asarray(z)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    full_cfg = dataclasses.replace(cfg, attention_window=0)
    full = np.asarray(jax_decoder.decoder_logits(params, full_cfg, jnp.asarray(tokens), None if z is None else jnp.asarray(z)))
    assert np.allclose(full[:, :5], got[:, :5], atol=1e-4) and np.abs(full[:, 6:] - got[:, 6:]).max() > 0.1


def test_the_gpu_kernels_window_argument_is_the_masked_window():
    """The cuDNN path passes local_window_size=(W-1, 0) with is_causal; JAX's XLA implementation of
    the same arguments (runnable here) must equal the explicit mask the CPU uses."""
    import jax
    import jax.numpy as jnp

    from ltm_ppl.models.jax.decoder import causal_attention

    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 16, 2, 8)) for i in range(3))
    kernel_args = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=(4, 0))
    np.testing.assert_allclose(np.asarray(causal_attention(q, k, v, 5)), np.asarray(kernel_args), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(causal_attention(q, k, v, 4)), np.asarray(kernel_args), atol=1e-3)


def test_windowed_kv_cache_decoding_past_the_window_matches_the_uncached_forward(torch_one_thread):
    """Every decode step's logits (positions 4..15, window 5) = the uncached forward's; greedy
    generation through window refills = torch's tokens."""
    import jax.numpy as jnp
    import torch

    from ltm_ppl.models.jax import decoder as jax_decoder, generate as jax_generate
    from ltm_ppl.models.torch.generate import generate as torch_generate

    cfg, weights, decoder, params = twin_decoders(9, attention_window=5)
    rng = np.random.default_rng(10)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, cfg.block_size)))
    z = jnp.asarray(rng.standard_normal((2, cfg.n_z, cfg.d_model)).astype(np.float32))
    full = np.asarray(jax_decoder.decoder_logits(params, cfg, tokens, z))
    lkv = jax_decoder.latent_kv(params, cfg, z)
    cache, logits = jax_decoder.prefill(params, cfg, tokens[:, :4], lkv)
    steps = [logits]
    for t in range(4, cfg.block_size):
        cache, logits = jax_decoder.decode_step(params, cfg, cache, tokens[:, t], t, lkv)
        steps.append(logits)
    np.testing.assert_allclose(np.stack(steps[1:], 1), full[:, 4:], rtol=1e-4, atol=1e-4)
    context = np.asarray(tokens[:, :3]).copy()
    with torch.no_grad():
        expected = torch_generate(decoder, torch.from_numpy(context), torch.from_numpy(np.asarray(z).copy()), 2 * cfg.block_size,
                                  temperature=0).numpy()
    np.testing.assert_array_equal(jax_generate.generate(params, cfg, context, z, 2 * cfg.block_size, temperature=0), expected)


def test_elbo_terms_match_pyro(torch_one_thread):
    """Same weights, loc, log_scale and noise: per-sequence log-likelihoods and analytic KLs agree."""
    import functools

    import jax.numpy as jnp
    import torch

    from ltm_ppl.inference.numpyro_elbo import elbo_terms as jax_elbo
    from ltm_ppl.inference.pyro_elbo import elbo_terms as pyro_elbo
    from ltm_ppl.models.jax import program as numpyro_model
    from ltm_ppl.models.torch import program as pyro_model

    cfg, weights, decoder, params = twin_decoders(5)
    rng = np.random.default_rng(6)
    B, S = 3, 2
    tokens = rng.integers(0, cfg.vocab_size, (B, cfg.block_size + 1))
    loc = (0.5 * rng.standard_normal((B, cfg.n_z, cfg.d_model))).astype(np.float32)
    log_scale = (0.3 * rng.standard_normal((B, cfg.n_z, cfg.d_model)) - 0.5).astype(np.float32)
    eps = rng.standard_normal((S, B, cfg.n_z, cfg.d_model)).astype(np.float32)

    t = {k: torch.from_numpy(v) for k, v in dict(loc=loc, log_scale=log_scale, eps=eps).items()}
    with torch.no_grad():
        ll_p, kl_p = pyro_elbo(
            functools.partial(pyro_model.ltm_model, decoder), functools.partial(pyro_model.local_guide, loc=t["loc"], log_scale=t["log_scale"]),
            torch.from_numpy(tokens), num_particles=S, latent_value=t["loc"] + t["log_scale"].exp() * t["eps"],
        )
    j = {k: jnp.asarray(v) for k, v in dict(loc=loc, log_scale=log_scale, eps=eps).items()}
    ll_j, kl_j = jax_elbo(
        functools.partial(numpyro_model.ltm_model, params, cfg), functools.partial(numpyro_model.local_guide, loc=j["loc"], log_scale=j["log_scale"]),
        jnp.asarray(tokens), num_particles=S, latent_value=j["loc"] + jnp.exp(j["log_scale"]) * j["eps"],
    )
    assert ll_j.shape == (S, B) and kl_j.shape == (B,)
    np.testing.assert_allclose(np.asarray(ll_j), ll_p.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(kl_j), kl_p.numpy(), rtol=1e-5)
    assert np.ptp(ll_p.numpy(), axis=0).max() > 1e-3  # the two particles differ: noise reaches the loglik


def test_elbo_terms_generic_linear_gaussian():
    """numpyro_elbo and the fast loop run on any model with a latent and an observed site: on
    z ~ N(0, I), x ~ N(z, I) the fitted q approaches the exact posterior N(x / 2, I / 2)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    from ltm_ppl.config import InferenceConfig
    from ltm_ppl.inference.local.fast_fit import FastFit
    from ltm_ppl.inference.local.numpyro import fast_lrs, fit_local_posterior
    from ltm_ppl.noise import FastNoise

    def model(x):
        with numpyro.plate("seq", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
            numpyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    inf = InferenceConfig(fast_lr=0.05, final_lr_ratio=0.1, num_samples=32)
    x = jnp.asarray(np.random.default_rng(7).standard_normal((3, 5)).astype(np.float32) * 2)
    fit = jax.jit(lambda lrs, key: fit_local_posterior(model, x, (5,), inf, lrs, FastFit(FastNoise(key=key))))
    loc, log_scale = fit(jnp.asarray(fast_lrs(300, inf)), jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(loc), np.asarray(x) / 2, atol=0.1)
    np.testing.assert_allclose(np.asarray(log_scale), 0.5 * np.log(0.5), atol=0.1)
    # The reference's fixed-noise mode is the same loop with one eps injected at every step.
    eps = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 5))
    lrs = jnp.asarray(fast_lrs(5, inf))
    fixed = fit_local_posterior(model, x, (5,), inf, lrs, FastFit(FastNoise(fixed=eps)))
    injected = fit_local_posterior(model, x, (5,), inf, lrs, FastFit(FastNoise(per_step=jnp.broadcast_to(eps, (5, *eps.shape)))))
    np.testing.assert_allclose(np.asarray(fixed[0]), np.asarray(injected[0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(fixed[1]), np.asarray(injected[1]), rtol=1e-6)


@pytest.mark.parametrize("optimizer,init", [("sgd", "reference"), ("adam", "prior")])
def test_bound_matches_pyro_on_random_weights(optimizer, init, torch_one_thread):
    """Same weights and injected noise: the fitted bound agrees for each local optimiser and init."""
    from ltm_ppl.inference import create

    inferences = {}
    for backend in ("pyro", "numpyro"):
        cfg = tiny_cfg(backend=backend)
        cfg.inference.optimizer, cfg.inference.init, cfg.inference.fast_lr = optimizer, init, 0.1
        inferences[backend] = create(cfg)
    weights = random_weights({k: v.shape for k, v in inferences["pyro"].weights().items()}, seed=10)
    for inference in inferences.values():
        inference.load_weights(weights)
    rng = np.random.default_rng(11)
    B, steps, shape = 3, 4, (4, 32)
    batch = rng.integers(0, 64, (B, 17))
    noise = rng.standard_normal((1, B, *shape)).astype(np.float32)
    fast_noise = rng.standard_normal((steps, 2, B, *shape)).astype(np.float32)
    p, j = (inferences[b].bound(batch, steps, noise=noise, fast_noise=fast_noise) for b in ("pyro", "numpyro"))
    np.testing.assert_allclose(j["loglik"], p["loglik"], rtol=1e-4)
    np.testing.assert_allclose(j["kl"], p["kl"], rtol=1e-4)
    start_kl = 0.0 if init == "prior" else 0.5 * (np.exp(-10.0) - 1 + 10.0) * 4 * 32
    assert np.all(np.abs(p["kl"] - start_kl) > 0.1)  # the fast steps moved q


# ----- one run directory, two backends -------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small .txt corpus (one document, cut at line breaks 90/5/5 into train/val/test)."""
    rng = np.random.default_rng(0)
    words = "in the beginning god created heaven and earth light was good day night water".split()
    lines = [" ".join(rng.choice(words, size=8)) + "." for _ in range(400)]
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(TOML)
    return path


def _fit_cli(backend: str, corpus: Path, config_file: Path, out: Path) -> Path:
    from click.testing import CliRunner

    from ltm_ppl.cli import cli

    args = ["fit", "--config", str(config_file), "--backend", backend, "--data", str(corpus),
            "--tokenizer", "bytes", "--out", str(out), "--device", "cpu", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["iterations"] == 4 and np.isfinite(summary["val"]["nll_per_token"])
    return out


@pytest.fixture(scope="module")
def pyro_run(tmp_path_factory, corpus, config_file, torch_one_thread) -> Path:
    return _fit_cli("pyro", corpus, config_file, tmp_path_factory.mktemp("runs") / "pyro")


@pytest.fixture(scope="module")
def numpyro_run(tmp_path_factory, corpus, config_file) -> Path:
    return _fit_cli("numpyro", corpus, config_file, tmp_path_factory.mktemp("runs") / "numpyro")


def _both_backends(run: Path):
    from ltm_ppl.run import read_config
    from ltm_ppl.run import load_inference

    out = {}
    for backend in ("pyro", "numpyro"):
        cfg, _ = read_config(run)
        cfg.train.backend = backend
        out[backend] = load_inference(run, cfg)
        assert out[backend].backend == backend
    return out


@pytest.mark.parametrize("trained_by", ["pyro", "numpyro"])
def test_run_bound_is_the_same_in_both_backends(trained_by, request, torch_one_thread):
    run = request.getfixturevalue(f"{trained_by}_run")
    inferences = _both_backends(run)
    cfg = inferences["pyro"].cfg
    np.testing.assert_array_equal(inferences["pyro"].weights()["tok_emb.weight"], inferences["numpyro"].weights()["tok_emb.weight"])
    rng = np.random.default_rng(8)
    B, steps, shape = 4, 3, (cfg.model.n_z, cfg.model.d_model)
    batch = rng.integers(0, cfg.model.vocab_size, (B, cfg.model.block_size + 1))
    noise = rng.standard_normal((2, B, *shape)).astype(np.float32)
    fast_noise = rng.standard_normal((steps, 1, B, *shape)).astype(np.float32)
    terms = {name: inf.bound(batch, steps, noise=noise, fast_noise=fast_noise) for name, inf in inferences.items()}
    p, j = terms["pyro"], terms["numpyro"]
    assert p["num_tokens"] == j["num_tokens"] == cfg.model.block_size
    np.testing.assert_allclose(j["loglik"] - j["kl"], p["loglik"] - p["kl"], rtol=1e-4)
    np.testing.assert_allclose(j["loglik"], p["loglik"], rtol=1e-4)
    np.testing.assert_allclose(j["kl"], p["kl"], rtol=1e-4, atol=1e-4)
    assert np.all(p["kl"] > 0.01)  # the fast steps moved q away from the prior
    # Other fast noise, other bound: the injected noise is really what both used.
    other = inferences["numpyro"].bound(batch, steps, noise=noise, fast_noise=fast_noise[::-1].copy())
    assert not np.allclose(other["kl"], j["kl"], rtol=1e-4)


def _eval_json(run: Path, backend: str) -> dict:
    from click.testing import CliRunner

    from ltm_ppl.cli import cli

    args = ["eval", str(run), "--backend", backend, "--json", "--max-windows", "8", "--steps", "2", "--device", "cpu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_eval_cli_numpyro_reads_a_pyro_run(torch_one_thread, pyro_run):
    pyro_record = _eval_json(pyro_run, "pyro")
    jax_record = _eval_json(pyro_run, "numpyro")
    assert set(jax_record) == set(pyro_record)
    assert jax_record["backend"] == "numpyro" and pyro_record["backend"] == "pyro"
    assert jax_record["num_tokens"] == pyro_record["num_tokens"] == 8 * 16
    # Fresh noise differs between the backends, the model does not: the bounds are close.
    assert abs(jax_record["nll_per_token"] - pyro_record["nll_per_token"]) < 0.05 * pyro_record["nll_per_token"]


def test_generate_from_both_backends(torch_one_thread, numpyro_run):
    from ltm_ppl.generate import generate_text
    from ltm_ppl.run import run_tokenizer

    inferences = _both_backends(numpyro_run)
    tokenizer = run_tokenizer(numpyro_run, inferences["numpyro"].cfg)
    for inf in inferences.values():
        texts = generate_text(inf, tokenizer, "in the", 2, 20, 1.0, 0, 2, seed=0)
        assert len(texts) == 2 and all(t.startswith("in the") for t in texts)
    again = generate_text(inferences["numpyro"], tokenizer, None, 2, 20, 1.0, 5, 2, seed=0)
    assert again == generate_text(inferences["numpyro"], tokenizer, None, 2, 20, 1.0, 5, 2, seed=0)


# ----- training, weights, resume -------------------------------------------------------------
def test_numpyro_training_lowers_the_heldout_bound():
    import jax

    from ltm_ppl.inference import create

    cfg = tiny_cfg(train=dict(lr=1e-2, warmup_iters=2, iters=40, batch_size=8))
    cfg.inference.steps = 2
    inference = create(cfg)
    train = markov_tokens(64, cfg.model.block_size, cfg.model.vocab_size, seed=0)
    held_out = markov_tokens(8, cfg.model.block_size, cfg.model.vocab_size, seed=1)
    rng = np.random.default_rng(9)
    shape = (8, cfg.model.n_z, cfg.model.d_model)
    noise, fast_noise = rng.standard_normal((1, *shape)), rng.standard_normal((4, 1, *shape))

    def bound():
        terms = inference.bound(held_out, 4, noise=noise, fast_noise=fast_noise)
        return -float(np.sum(terms["loglik"] - terms["kl"])) / (terms["num_tokens"] * len(held_out))

    before = bound()
    for it in range(cfg.train.iters):
        metrics = inference.step(train[(it * 8) % 64 : (it * 8) % 64 + 8])
        assert set(metrics) == {"loss", "nll", "kl", "lr", "grad_norm", "finite"}
        assert all(isinstance(metrics[k], jax.Array) and metrics[k].shape == () for k in ("loss", "nll", "kl", "grad_norm"))
        assert bool(metrics["finite"]) and all(np.isfinite(float(v)) for v in metrics.values())
    assert inference.iteration == cfg.train.iters
    after = bound()
    assert after < before - 1.0, (before, after)  # nats per token; uniform is log 64 = 4.16


def test_numpyro_refuses_missing_misshapen_and_extra_tensors():
    from ltm_ppl.errors import LtmError
    from ltm_ppl.inference import create

    inference = create(tiny_cfg())
    good = inference.weights()
    bad = dict(good, **{"layers.1.attn.qkv.weight": np.zeros((5, 5), np.float32)})
    with pytest.raises(LtmError, match=r"tensor layers\.1\.attn\.qkv\.weight .* shape \[5, 5\].*needs \[96, 32\]"):
        inference.load_weights(bad)
    missing = {k: v for k, v in good.items() if k != "layers.0.cross.kv.weight"}
    with pytest.raises(LtmError, match=r"lacks tensor layers\.0\.cross\.kv\.weight"):
        inference.load_weights(missing)
    with pytest.raises(LtmError, match=r"has tensor _orig_mod\.tok_emb\.weight"):
        inference.load_weights(dict(good, **{"_orig_mod.tok_emb.weight": good["tok_emb.weight"]}))
    inference.load_weights({k: v + 1 for k, v in good.items()})
    np.testing.assert_array_equal(inference.weights()["final_norm.weight"], good["final_norm.weight"] + 1)


def test_rng_scope_leaves_the_training_key_alone():
    from ltm_ppl.inference import create

    inference = create(tiny_cfg())
    key = np.asarray(inference.key).copy()
    with inference.rng_scope(123):
        a = np.asarray(inference.prior_latents(2))
    with inference.rng_scope(123):
        b = np.asarray(inference.prior_latents(2))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(inference.key), key)


def test_numpyro_fixed_noise_mode_and_seeded_bounds():
    """The reference's fixed-noise mode trains and bounds; a bound inside rng_scope(seed) repeats."""
    from ltm_ppl.inference import create

    cfg = tiny_cfg()
    cfg.inference.fixed_noise = True
    inference = create(cfg)
    batch = markov_tokens(4, cfg.model.block_size, cfg.model.vocab_size, seed=3)
    assert np.isfinite(inference.step(batch)["loss"]) and inference.iteration == 1
    with inference.rng_scope(5):
        a = inference.bound(batch, 3)
    with inference.rng_scope(5):
        b = inference.bound(batch, 3)
    c = inference.bound(batch, 3)
    np.testing.assert_array_equal(a["loglik"], b["loglik"])
    assert not np.array_equal(a["loglik"], c["loglik"])
    # eval --fixed-noise's row reuses the fast loop's eps (same keys, same q): only the estimate moves.
    with inference.rng_scope(5):
        fixed = inference.bound(batch, 3, at_fast_noise=True)
    np.testing.assert_array_equal(fixed["kl"], a["kl"])
    assert not np.allclose(fixed["loglik"], a["loglik"])


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_numpyro_resume_is_exact(tmp_path, corpus, config_file):
    """N iterations in one go == N/2, resume, N/2: same weights, optimiser state and metrics."""
    from safetensors.numpy import load_file

    from ltm_ppl.run import latest_checkpoint, read_config
    from ltm_ppl.config import load_toml
    from ltm_ppl.train import fit

    def cfg(iters):
        c = load_toml(config_file)
        c.train.backend, c.data.data, c.data.tokenizer = "numpyro", str(corpus), "bytes"
        c.train.iters, c.train.lr_decay_iters, c.train.eval_interval, c.train.checkpoint_interval = iters, 4, 2, 2
        return c

    quiet = dict(progress=False, echo=lambda s: None)
    fit(cfg(4), out=str(tmp_path / "once"), **quiet)
    fit(cfg(2), out=str(tmp_path / "twice"), **quiet)
    resumed, _ = read_config(tmp_path / "twice")
    resumed.train.iters = 4
    fit(resumed, resume=str(tmp_path / "twice"), **quiet)

    for name in ("weights.safetensors", "optimizer.safetensors"):
        once, twice = (load_file(latest_checkpoint(tmp_path / run) / name) for run in ("once", "twice"))
        assert set(once) == set(twice) and once
        for key in once:
            np.testing.assert_array_equal(once[key], twice[key], err_msg=f"{name}:{key}")
    once, twice = _records(tmp_path / "once"), _records(tmp_path / "twice")
    assert [r["iter"] for r in once] == [1, 2, 2, 3, 4, 4]
    assert once == twice


# ----- import isolation ----------------------------------------------------------------------
ISOLATION = textwrap.dedent(
    """
    import sys
    import numpy as np
    from ltm_ppl.config import RunConfig
    from ltm_ppl import cli, evaluate, generate, run, train
    from ltm_ppl.inference import create
    cfg = RunConfig()
    cfg.model.vocab_size, cfg.model.d_model, cfg.model.n_layer, cfg.model.n_head = 64, 32, 2, 4
    cfg.model.n_z, cfg.model.block_size = 4, 16
    cfg.train.backend, cfg.train.device = "{backend}", "cpu"
    inference = create(cfg)
    batch = np.random.default_rng(0).integers(0, 64, (2, 17))
    inference.step(batch)
    inference.bound(batch, 2)
    bad = sorted(m for m in {forbidden} if m in sys.modules)
    print("loaded:", bad)
    sys.exit(1 if bad else 0)
    """
)


@pytest.mark.parametrize("backend,forbidden", [("numpyro", ("torch", "pyro")), ("pyro", ("jax", "numpyro", "optax"))])
def test_backend_import_isolation(backend, forbidden):
    env = dict(os.environ, OMP_NUM_THREADS="1", JAX_COMPILATION_CACHE_DIR=str(JAX_CACHE), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    script = ISOLATION.format(backend=backend, forbidden=repr(set(forbidden)))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded: []" in result.stdout
