"""The NumPyro path's speed work must not change what is computed (issue 11): the on-device
non-finite guard, the layer scan, the chunked likelihood (equal to the full log-softmax in values
and gradients, and to NumPyro's own traces), padded eval batches and generation without
per-token compiles. Tiny shapes; jax imported inside the tests.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import TINY_MODEL, random_weights, tiny_cfg

pytestmark = pytest.mark.usefixtures("jax_caches")


def test_update_is_skipped_when_a_gradient_is_not_finite():
    """A finite loss with one NaN gradient entry: weights and AdamW state stay as they were and
    `finite` is False; with finite gradients the same call moves the weights."""
    import jax
    import jax.numpy as jnp

    from ltm_ppl.inference import create

    inference = create(tiny_cfg())
    programs, params, state = inference.programs, inference.params, inference.opt_state
    grads = jax.tree.map(jnp.ones_like, params)
    bad = dict(grads, **{"final_norm.weight": grads["final_norm.weight"].at[0].set(jnp.nan)})
    new_params, new_state, guard = jax.jit(programs.update)(params, state, bad, 1e-2, jnp.float32(1.0))
    assert not bool(guard["finite"])
    for a, b in zip(jax.tree.leaves((new_params, new_state)), jax.tree.leaves((params, state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved, _, guard = jax.jit(programs.update)(params, state, grads, 1e-2, jnp.float32(1.0))
    assert bool(guard["finite"]) and not np.allclose(np.asarray(moved["final_norm.weight"]), np.asarray(params["final_norm.weight"]))


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 8 tokens (vocab 64), so tiny shapes run the chunked path over many chunks."""
    from ltm_ppl.models.jax import likelihood as jax_chunked_ce

    monkeypatch.setattr(jax_chunked_ce, "CHUNK_ELEMENTS", 8 * 64)


def test_chunked_log_probs_equal_the_full_log_softmax(small_chunks):
    """Values and gradients (hidden states and head) of the chunked head + log-softmax equal the
    full [tokens x vocab] version, with a token count that is not a multiple of the chunk."""
    import jax
    import jax.numpy as jnp

    from ltm_ppl.models.jax.likelihood import chunk_tokens, token_log_probs

    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((3, 13, 16)), jnp.float32)
    head = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 64, (3, 13)))
    weights = jnp.asarray(rng.standard_normal((3, 13)), jnp.float32)  # a cotangent that differs per token
    assert chunk_tokens(64) == 8 and 3 * 13 % 8

    def full(h, w):
        return (jnp.take_along_axis(jax.nn.log_softmax(h @ w.T, -1), targets[..., None], -1)[..., 0] * weights).sum()

    chunked = lambda h, w: (token_log_probs(h, w, targets) * weights).sum()  # noqa: E731
    np.testing.assert_allclose(token_log_probs(hidden, head, targets),
                               jax.nn.log_softmax(hidden @ head.T, -1)[jnp.arange(3)[:, None], jnp.arange(13), targets],
                               rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.grad(chunked, (0, 1))(hidden, head), jax.grad(full, (0, 1))(hidden, head)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["local", "amortized"])
def test_elbo_and_gradients_equal_numpyros_own_trace_mean_field_elbo(method, small_chunks):
    """The ELBO the training step differentiates (the program with the chunked likelihood) equals
    NumPyro's TraceMeanField_ELBO of the model with the plain full-logits TokenSequence and the
    guide, for the same draw of z: value and gradients w.r.t. every decoder (and encoder) weight."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro import handlers
    from numpyro.infer import TraceMeanField_ELBO

    from ltm_ppl.inference import create
    from ltm_ppl.models.jax import program as numpyro_model
    from ltm_ppl.models.jax.decoder import decoder_logits
    from jax_token_sequence import TokenSequence
    from ltm_ppl.models.jax.program import amortized_guide, local_guide

    cfg = tiny_cfg(method)
    inference = create(cfg)
    programs = inference.programs
    params = {k: jnp.asarray(v) for k, v in random_weights(inference.param_shapes(), seed=3).items()}
    rng = np.random.default_rng(4)
    tokens = jnp.asarray(rng.integers(0, cfg.model.vocab_size, (3, cfg.model.block_size + 1)), jnp.int32)
    shape = (3, cfg.model.n_z, cfg.model.d_model)
    loc = jnp.asarray(0.3 * rng.standard_normal(shape), jnp.float32)
    log_scale = jnp.asarray(-1 + 0.1 * rng.standard_normal(shape), jnp.float32)
    eps = jnp.asarray(rng.standard_normal((1, *shape)), jnp.float32)
    n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)

    def reference_model(p, tokens):  # the LTM with the unchunked likelihood
        with numpyro.plate("seq", tokens.shape[0]):
            z = numpyro.sample("z", numpyro.distributions.Normal(0.0, 1.0).expand([cfg.model.n_z, cfg.model.d_model]).to_event(2))
            numpyro.sample("x", TokenSequence(decoder_logits(p, cfg.model, tokens[:, :-1], z)), obs=tokens[:, 1:])

    if method == "local":
        def optimised(p):
            loglik, kl = programs.elbo(p, tokens, loc, log_scale, 1, eps, None)
            return (-loglik.mean(0).sum() + kl.sum()) / n_tokens

        def reference(p):
            guide = handlers.substitute(functools.partial(local_guide, loc=loc, log_scale=log_scale),
                                        data={"z": loc + jnp.exp(log_scale) * eps[0]})
            return TraceMeanField_ELBO().loss(jax.random.PRNGKey(0), {}, functools.partial(reference_model, p), guide, tokens) / n_tokens
    else:
        from ltm_ppl.inference.numpyro_elbo import elbo_terms

        def draw(p):  # the encoder's q at p, z from the fixed eps (reparameterised)
            enc_loc, enc_log_scale = programs.encoder_fn(p)(tokens)
            return enc_loc + jnp.exp(enc_log_scale) * eps[0]

        def optimised(p):
            guide = functools.partial(amortized_guide, encoder_fn=programs.encoder_fn(p))
            loglik, kl = elbo_terms(programs.model(p), guide, tokens, latent_value=draw(p))
            return (-loglik.mean(0).sum() + kl.sum()) / n_tokens

        def reference(p):
            guide = handlers.substitute(functools.partial(amortized_guide, encoder_fn=programs.encoder_fn(p)), data={"z": draw(p)})
            return TraceMeanField_ELBO().loss(jax.random.PRNGKey(0), {}, functools.partial(reference_model, p), guide, tokens) / n_tokens

    assert programs.model(params).func is numpyro_model.ltm_model  # the training step's own program
    value, grads = jax.value_and_grad(optimised)(params)
    want, want_grads = jax.value_and_grad(reference)(params)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    assert set(grads) == set(want_grads) == set(params)
    for name in params:
        np.testing.assert_allclose(grads[name], want_grads[name], rtol=2e-4, atol=1e-6, err_msg=name)
    assert float(optax_norm(want_grads)) > 1e-3  # gradients that can differ


def optax_norm(tree):
    import optax

    return optax.tree.norm(tree)


@pytest.mark.parametrize("method", ["local", "none"])
def test_eval_pads_the_last_batch_to_one_shape(method):
    """A corpus of 7 windows in batches of 4: the last batch of 3 is padded to 4 rows, so the
    bound is traced once, a second evaluation traces nothing, and the corpus number equals the
    unpadded evaluation's (the padding rows contribute nothing)."""
    from ltm_ppl.evaluate import windows_bound
    from ltm_ppl.inference import create

    cfg = tiny_cfg(method)
    if method == "none":
        cfg.model.latent = False
    block = cfg.model.block_size
    tokens = np.random.default_rng(5).integers(0, cfg.model.vocab_size, 7 * block + 1)
    inference = create(cfg)
    programs = inference.programs
    name = "bound" if method == "local" else "loglik"
    before = dict(programs.traces)
    first = windows_bound(inference, tokens, 2, 1, 4, seed=1)
    assert inference.eval_rows == 4 and first["num_sequences"] == 7
    if name:
        assert programs.traces[name] - before.get(name, 0) <= 1
        traced = programs.traces[name]
    again = windows_bound(inference, tokens, 2, 1, 4, seed=1)
    assert again == first
    if name:
        assert programs.traces[name] == traced  # the second evaluation compiled nothing new

    unpadded = create(cfg)
    unpadded.padded = lambda batch: (unpadded.tensor(batch), len(batch))
    want = windows_bound(unpadded, tokens, 2, 1, 4, seed=1)
    np.testing.assert_allclose(first["nll_per_token"], want["nll_per_token"], rtol=1e-6)
    np.testing.assert_allclose(first["kl_per_sequence"], want["kl_per_sequence"], rtol=1e-5, atol=1e-7)
    if name:
        assert programs.traces[name] > traced  # the unpadded last batch did need its own trace


def test_scanned_layers_equal_unrolled(monkeypatch):
    """The layer loop as a real lax.scan (the accelerator path) gives the CPU's unrolled logits,
    and the KV-cached decode agrees with it."""
    import jax.numpy as jnp

    from ltm_ppl.config import ModelConfig
    from ltm_ppl.models.jax import decoder as jax_decoder

    cfg = ModelConfig(**TINY_MODEL)
    params = {k: jnp.asarray(v) for k, v in random_weights(jax_decoder.param_shapes(cfg), seed=6).items()}
    rng = np.random.default_rng(7)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, cfg.block_size)))
    z = jnp.asarray(rng.standard_normal((2, cfg.n_z, cfg.d_model)), jnp.float32)
    unrolled = jax_decoder.decoder_logits(params, cfg, tokens, z)
    monkeypatch.setattr(jax_decoder, "unrolled_layers", lambda cfg: 1)
    np.testing.assert_allclose(jax_decoder.decoder_logits(params, cfg, tokens, z), unrolled, rtol=1e-5, atol=1e-5)
    lkv = jax_decoder.latent_kv(params, cfg, z)
    cache, logits = jax_decoder.prefill(params, cfg, tokens[:, :5], lkv)
    np.testing.assert_allclose(logits, unrolled[:, 4], rtol=1e-5, atol=1e-5)
    cache, logits = jax_decoder.decode_step(params, cfg, cache, tokens[:, 5], 5, lkv)
    np.testing.assert_allclose(logits, unrolled[:, 5], rtol=1e-5, atol=1e-5)


def test_generation_compiles_once_for_every_token_and_prompt_length():
    """Prompts of 3 and 7 tokens, each generating past two window refills: the prefill and the
    per-token step are traced at most once each (none for the second prompt), and greedy tokens
    equal the full forward's argmax at every position before the first refill."""
    import dataclasses

    import jax.numpy as jnp

    from ltm_ppl.config import ModelConfig
    from ltm_ppl.models.jax import decoder as jax_decoder, generate as jax_generate

    cfg = ModelConfig(**TINY_MODEL)
    params = {k: jnp.asarray(v) for k, v in random_weights(jax_decoder.param_shapes(cfg), seed=8).items()}
    rng = np.random.default_rng(9)
    z = jnp.asarray(rng.standard_normal((2, cfg.n_z, cfg.d_model)), jnp.float32)
    traces = jax_generate._generation_programs(dataclasses.astuple(cfg), jnp.float32, 0.0, 0)[3]
    before = dict(traces)
    first = jax_generate.generate(params, cfg, rng.integers(0, cfg.vocab_size, (2, 3)), z, 2 * cfg.block_size, temperature=0)
    after_first = dict(traces)
    assert all(after_first[k] - before[k] <= 1 for k in traces)
    context = rng.integers(0, cfg.vocab_size, (2, 7))
    second = jax_generate.generate(params, cfg, context, z, 2 * cfg.block_size, temperature=0)
    assert traces == after_first and first.shape == second.shape == (2, 2 * cfg.block_size)
    history = np.concatenate([context, second], axis=1)[:, : cfg.block_size + 1]
    logits = jax_decoder.decoder_logits(params, cfg, jnp.asarray(history[:, :-1]), z)
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1)[:, 6:], history[:, 7:])
