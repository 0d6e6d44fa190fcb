"""Tests that protect the numbers `ltm fit/eval` report: the step-size schedules at interior steps,
one slow AdamW step after another agreeing across the two backends, and the reported ELBO equal
to each PPL's own TraceMeanField_ELBO on the same draws. Each fails when the mathematics is wrong
(a linear schedule, weight decay on norm gains, a KL added instead of subtracted).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import host_metrics, random_weights, tiny_cfg

pytestmark = pytest.mark.usefixtures("jax_caches", "torch_one_thread")


# ----- schedules -----------------------------------------------------------------------------
def cosine(step, start_step, end_step, high, low):
    """high at start_step, low at end_step, the half cosine between (written out independently)."""
    progress = (step - start_step) / (end_step - start_step)
    return low + (high - low) * (1 + math.cos(math.pi * progress)) / 2


@pytest.mark.parametrize("steps", [5, 16])
def test_fast_lr_follows_the_cosine_at_every_interior_step(steps):
    from ltm_ppl.inference.schedules import fast_lr

    lr, ratio = 0.3, 0.1
    for t in range(steps):
        assert fast_lr(t, steps, lr, ratio) == pytest.approx(cosine(t, 0, steps - 1, lr, lr * ratio), rel=1e-12)
    # A quarter of the way, the cosine is well above the linear interpolation (teeth vs linear).
    quarter = fast_lr((steps - 1) / 4, steps, lr, ratio)
    assert quarter - (lr - (lr - lr * ratio) / 4) > 0.01


def test_fast_lr_of_the_shortest_loops():
    """Two fast steps: lr, then lr * final_ratio (the cosine's two ends); one step: lr; over
    step / steps ("T", the published loop) two steps end half-way down."""
    from ltm_ppl.inference.schedules import fast_lr

    assert [fast_lr(t, 2, 0.3, 0.1) for t in range(2)] == pytest.approx([0.3, 0.03], rel=1e-12)
    assert fast_lr(0, 1, 0.3, 0.1) == 0.3 and fast_lr(0, 1, 0.3, 0.1, "T") == pytest.approx(0.3, rel=1e-12)
    assert [fast_lr(t, 2, 0.3, 0.1, "T") for t in range(2)] == pytest.approx([0.3, 0.165], rel=1e-12)


def test_fast_loss_divisor_is_the_predicted_tokens_per_window_or_one():
    from ltm_ppl.config import InferenceConfig
    from ltm_ppl.inference.schedules import fast_loss_divisor

    per_token, summed = InferenceConfig(fast_loss="per_token"), InferenceConfig(fast_loss="sum")
    assert [fast_loss_divisor(per_token, n) for n in (33, 3, 2, 1)] == [32.0, 2.0, 1.0, 1.0]
    assert fast_loss_divisor(summed, 33) == 1.0


def test_slow_lr_warms_up_linearly_then_follows_the_cosine_to_its_floor():
    from ltm_ppl.config import TrainConfig
    from ltm_ppl.inference.schedules import slow_lr

    t = TrainConfig(lr=2e-3, warmup_iters=4, iters=100, lr_decay_iters=40, min_lr_ratio=0.1)
    assert [slow_lr(i, t) for i in range(4)] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3], rel=1e-12)
    for i in range(4, 41):
        assert slow_lr(i, t) == pytest.approx(cosine(i, 4, 40, 2e-3, 2e-4), rel=1e-12), i
    assert slow_lr(60, t) == pytest.approx(2e-4, rel=1e-12)
    assert slow_lr(13, t) - (2e-3 - 1.8e-3 / 4) > 1e-4  # above the linear decay a quarter in
    t.lr_decay_iters = 0  # 0: the horizon is `iters`
    assert slow_lr(52, t) == pytest.approx(cosine(52, 4, 100, 2e-3, 2e-4), rel=1e-12)


# ----- slow-step parity ----------------------------------------------------------------------
# AdamW with weight decay on matrices only, clipping, betas and the slow schedule, all away from
# their defaults so that a backend using a default instead of the configured value disagrees.
SLOW = dict(lr=2e-2, warmup_iters=2, iters=20, lr_decay_iters=12, min_lr_ratio=0.2, weight_decay=0.5,
            beta1=0.7, beta2=0.9, grad_clip=0.05)
START = 5  # the loaded state's iteration and Adam step count: 3 past warm-up, inside the cosine
PARITY_ATOL = 1e-5  # float32, 3 AdamW steps of size <= 0.02 on weights of norm ~1


def shared_moments(shapes: dict, seed: int) -> dict:
    """Adam moments with second moments at the clipped gradients' scale (~3e-4 per element):
    the update depends on the clipped gradient, and tiny float differences of near-zero gradients
    are not blown up to +-lr as they are from an empty state."""
    rng = np.random.default_rng(seed)
    return {name: (3e-4 * rng.standard_normal(shape), (2e-4 + 4e-4 * np.abs(rng.standard_normal(shape))) ** 2)
            for name, shape in shapes.items()}


def load_moments(inference, moments: dict, iteration: int) -> None:
    """The same optimiser state (moments, step count, iteration) in either backend's own names."""
    tensors, _ = inference.optimizer_state()
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    for name, (m, v) in moments.items():
        if inference.backend == "pyro":
            tensors |= {f"exp_avg/{name}": f32(m), f"exp_avg_sq/{name}": f32(v), f"step/{name}": f32(iteration)}
        else:
            tensors |= {f"opt/0/mu/{name}": f32(m), f"opt/0/nu/{name}": f32(v), "opt/0/count": np.int32(iteration)}
    inference.load_optimizer_state(tensors, {"iteration": iteration})


def test_three_slow_steps_from_a_loaded_state_give_the_same_weights_in_pyro_and_numpyro():
    """`none` (the decoder alone, no noise): three iterations past warm-up, each clipped, from the
    same weights and the same non-zero Adam moments. The weights agree within PARITY_ATOL; with
    weight decay on the norm gains, no clip, other betas or another schedule they differ by >> it."""
    from ltm_ppl.inference import create
    from ltm_ppl.inference.schedules import slow_lr

    backends = {b: create(tiny_cfg("none", backend=b, train=SLOW)) for b in ("pyro", "numpyro")}
    shapes = {k: v.shape for k, v in backends["pyro"].weights().items()}
    weights, moments = random_weights(shapes, seed=21), shared_moments(shapes, seed=23)
    for inference in backends.values():
        inference.load_weights(weights)
        load_moments(inference, moments, START)
    rng = np.random.default_rng(22)
    for i in range(START, START + 3):
        batch = rng.integers(0, 64, (3, 17))
        metrics = {b: host_metrics(inference.step(batch)) for b, inference in backends.items()}
        for m in metrics.values():
            assert m["lr"] == pytest.approx(slow_lr(i, backends["pyro"].cfg.train))
            assert m["grad_norm"] > 10 * SLOW["grad_clip"]  # the clip is active at every step
        assert metrics["numpyro"]["loss"] == pytest.approx(metrics["pyro"]["loss"], rel=1e-5)
    got, expected = backends["numpyro"].weights(), backends["pyro"].weights()
    moved = 0.0
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=PARITY_ATOL, err_msg=name)
        moved = max(moved, float(np.abs(expected[name] - weights[name]).max()))
    assert moved > 0.02  # the steps did move the weights
    assert backends["pyro"].iteration == backends["numpyro"].iteration == START + 3


# ----- the reported ELBO against each PPL's TraceMeanField_ELBO -------------------------------
class InjectedNoise:
    """An inference object whose `bound` draws the given eps (reported and fast), so that the
    number corpus_bound reports can be recomputed independently. Everything else is the real one."""

    def __init__(self, inference, noise, fast_noise):
        self.inference, self.noise, self.fast_noise = inference, noise, fast_noise
        self.cfg, self.rng_scope = inference.cfg, inference.rng_scope

    def bound(self, batch, steps, num_samples):
        return self.inference.bound(batch, steps, noise=self.noise, fast_noise=self.fast_noise)


def fitted_q(inference, batch, steps, fast_noise):
    """(loc, log_scale) as numpy: the q that `bound` fits with the same fast noise."""
    if inference.backend == "pyro":
        loc, log_scale, _ = inference.fit_posterior(inference.tensor(batch), steps, fast_noise=fast_noise)
        return loc.numpy(), log_scale.numpy()
    import jax.numpy as jnp

    from ltm_ppl.inference.local.fast_fit import FastFit
    from ltm_ppl.inference.local.numpyro import fast_lrs, fit_local_posterior
    from ltm_ppl.noise import FastNoise

    loc, log_scale = fit_local_posterior(
        inference.programs.model(inference.params), inference.tensor(batch), inference.programs.shape,
        inference.cfg.inference, jnp.asarray(fast_lrs(steps, inference.cfg.inference)), FastFit(FastNoise(per_step=jnp.asarray(fast_noise))),
    )
    return np.asarray(loc), np.asarray(log_scale)


def pyro_trace_mean_field_elbo(inference, batch, loc, log_scale, z):
    """-TraceMeanField_ELBO loss of Pyro with the guide replayed at z (summed over sequences)."""
    import functools

    import pyro
    import torch
    from pyro import poutine

    from ltm_ppl.models.torch.program import local_guide

    tokens = inference.tensor(batch)
    guide = functools.partial(local_guide, loc=torch.from_numpy(loc), log_scale=torch.from_numpy(log_scale))
    at_z = poutine.trace(guide).get_trace(tokens)
    at_z.nodes["z"]["value"] = torch.from_numpy(z)
    with torch.no_grad(), pyro.validation_enabled(False):
        loss = pyro.infer.TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(
            inference.model, poutine.replay(guide, trace=at_z), tokens)
    return -float(loss)


def numpyro_trace_mean_field_elbo(inference, batch, loc, log_scale, z):
    """-TraceMeanField_ELBO loss of NumPyro with the guide's z substituted (summed over sequences)."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro import handlers

    from ltm_ppl.models.jax.program import local_guide

    guide = functools.partial(local_guide, loc=jnp.asarray(loc), log_scale=jnp.asarray(log_scale))
    guide = handlers.substitute(guide, data={"z": jnp.asarray(z)})
    model = inference.programs.model(inference.params)
    loss = numpyro.infer.TraceMeanField_ELBO().loss(jax.random.PRNGKey(0), {}, model, guide, inference.tensor(batch))
    return -float(loss)


RECOMPUTE = {"pyro": pyro_trace_mean_field_elbo, "numpyro": numpyro_trace_mean_field_elbo}
ELBO_RTOL = 2e-5  # float32 sums of ~100 token log-probs and 128 KL terms per sequence


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_reported_elbo_is_the_ppls_trace_mean_field_elbo_on_the_same_draws(backend):
    """corpus_bound's total (-nll_per_token * tokens), its reconstruction term and its KL per
    sequence equal the PPL's own TraceMeanField_ELBO, log-likelihood and analytic KL of the same q
    at the same two draws of z (averaged), summed over the sequences. Fails if the KL is added
    rather than subtracted."""
    from ltm_ppl.evaluate import windows_bound
    from ltm_ppl.inference import create

    inference = create(tiny_cfg("local", backend=backend, fast_lr=0.2))
    inference.load_weights(random_weights({k: v.shape for k, v in inference.weights().items()}, seed=31))
    rng = np.random.default_rng(32)
    B, steps, block = 3, 3, inference.cfg.model.block_size
    tokens = rng.integers(0, 64, B * block + 1)
    batch = np.stack([tokens[i * block : (i + 1) * block + 1] for i in range(B)])
    shape = (B, *inference.latent_shape) if backend == "pyro" else (B, *inference.programs.shape)
    noise = rng.standard_normal((2, *shape)).astype(np.float32)  # two draws of z per sequence
    fast_noise = rng.standard_normal((steps, 1, *shape)).astype(np.float32)

    reported = windows_bound(InjectedNoise(inference, noise, fast_noise), tokens, steps=steps, num_samples=1, batch_size=B)
    assert inference.bound(batch, steps, noise=noise, fast_noise=fast_noise)["num_tokens"] == block  # per-token gaps
    assert reported["num_sequences"] == B and reported["num_tokens"] == B * block
    loc, log_scale = fitted_q(inference, batch, steps, fast_noise)
    # the reported estimate averages the log-likelihood over the draws: so does the recomputation
    expected_elbo = np.mean([RECOMPUTE[backend](inference, batch, loc, log_scale, loc + np.exp(log_scale) * eps)
                             for eps in noise])
    expected_kl = 0.5 * (loc**2 + np.exp(2.0 * log_scale) - 1 - 2 * log_scale).sum()
    assert expected_kl > 1.0  # a KL large enough for a sign error to show
    assert -reported["nll_per_token"] * reported["num_tokens"] == pytest.approx(expected_elbo, rel=ELBO_RTOL)
    assert reported["kl_per_sequence"] * B == pytest.approx(expected_kl, rel=ELBO_RTOL)
    assert -reported["reconstruction_nll_per_token"] * reported["num_tokens"] == pytest.approx(
        expected_elbo + expected_kl, rel=ELBO_RTOL)


# ----- the aggregation in evaluate.py, on numbers known exactly --------------------------------
def test_iwae_terms_are_log_mean_exp_and_mean_of_the_same_weights():
    from ltm_ppl.evaluate import iwae_terms

    rng = np.random.default_rng(41)
    w = rng.normal(-50.0, 3.0, (16, 5))
    iwae, elbo = iwae_terms(w)
    np.testing.assert_allclose(iwae, np.log(np.mean(np.exp(w + 50.0), axis=0)) - 50.0, rtol=1e-12)
    np.testing.assert_allclose(elbo, w.mean(0), rtol=1e-12)
    assert np.all(iwae > elbo)  # Jensen, strict for unequal weights
    one_iwae, one_elbo = iwae_terms(w[:1])
    np.testing.assert_allclose(one_iwae, w[0], rtol=1e-12)  # K = 1: IWAE is the ELBO of that draw
    big, _ = iwae_terms(w - 5000.0)  # stable far from 0: shifts through unchanged
    np.testing.assert_allclose(big, iwae - 5000.0, rtol=1e-12)
    apart, _ = iwae_terms(w + np.array([0.0, -3000.0, 0.0, 2000.0, 0.0]))  # each sequence its own scale
    np.testing.assert_allclose(apart, iwae + np.array([0.0, -3000.0, 0.0, 2000.0, 0.0]), rtol=1e-12)


def test_unigram_bound_by_hand():
    from ltm_ppl.evaluate import unigram_bound

    train = np.array([0, 0, 1, 0, 2])  # counts 3, 1, 1 (+1 each, vocab 4): p = 4/9, 2/9, 2/9, 1/9
    eval_tokens = np.array([3, 0, 1, 2, 0, 3, 1])  # block 2: 3 windows predict eval[1:7]
    got = unigram_bound(train, eval_tokens, vocab_size=4, block_size=2)
    p = np.array([4, 2, 2, 1]) / 9
    expected = -np.mean(np.log(p[[0, 1, 2, 0, 3, 1]]))
    assert got["nll_per_token"] == pytest.approx(expected, rel=1e-12)
    assert got["perplexity"] == pytest.approx(np.exp(expected), rel=1e-12)
    assert got["num_tokens"] == 6
    first = unigram_bound(train, eval_tokens, vocab_size=4, block_size=2, max_windows=1)
    assert first["num_tokens"] == 2 and first["nll_per_token"] == pytest.approx(-np.mean(np.log(p[[0, 1]])), rel=1e-12)


class KnownTerms:
    """An inference object whose per-sequence terms are fixed numbers (the aggregation under test
    is plain arithmetic in corpus_bound; the PPL paths are tested above)."""

    def __init__(self, block):
        import contextlib

        from ltm_ppl.config import RunConfig

        self.cfg = RunConfig()
        self.cfg.model.block_size = block
        self.rng_scope = lambda seed: contextlib.nullcontext()
        self.calls = []

    @staticmethod
    def terms(batch):
        first = batch[:, 0].astype(np.float64)  # a number per window: its first token
        return -3.0 * first - 1.0, 0.5 + 0.1 * first

    def bound(self, batch, steps, num_samples):
        self.calls.append((len(batch), steps, num_samples))
        loglik, kl = self.terms(batch)
        return {"loglik": loglik, "kl": kl, "num_tokens": batch.shape[1] - 1}

    def log_weights(self, batch, steps, num_samples):
        self.calls.append((len(batch), steps, num_samples))
        loglik, kl = self.terms(batch)
        spread = np.linspace(-1.0, 1.0, num_samples)[:, None]
        return loglik - kl + spread  # [K, B]


def test_corpus_bound_sums_bounds_and_tokens_over_every_window():
    from ltm_ppl.evaluate import iwae_terms, windows_bound

    block = 4
    tokens = np.arange(5 * block + 1) % 7  # 5 windows starting with tokens 0, 4, 1, 5, 2
    firsts = np.array([0, 4, 1, 5, 2], float)
    loglik, kl = -3.0 * firsts - 1.0, 0.5 + 0.1 * firsts
    inference = KnownTerms(block)
    got = windows_bound(inference, tokens, steps=3, num_samples=2, batch_size=2)
    assert inference.calls == [(2, 3, 2), (2, 3, 2), (1, 3, 2)]
    assert got["num_tokens"] == 5 * block and got["num_sequences"] == 5
    assert got["nll_per_token"] == pytest.approx(-(loglik - kl).sum() / (5 * block), rel=1e-12)
    assert got["perplexity"] == pytest.approx(np.exp(got["nll_per_token"]), rel=1e-12)
    assert got["reconstruction_nll_per_token"] == pytest.approx(-loglik.sum() / (5 * block), rel=1e-12)
    assert got["kl_per_sequence"] == pytest.approx(kl.mean(), rel=1e-12)
    assert got["per_sequence_mean_perplexity"] == pytest.approx(np.mean(np.exp(-(loglik - kl) / block)), rel=1e-12)
    assert (got["bound"], got["steps"], got["samples"]) == ("elbo", 3, 2)
    three = windows_bound(KnownTerms(block), tokens, steps=3, num_samples=2, batch_size=2, max_windows=3)
    assert three["num_sequences"] == 3 and three["nll_per_token"] == pytest.approx(
        -(loglik - kl)[:3].sum() / (3 * block), rel=1e-12)

    got = windows_bound(KnownTerms(block), tokens, steps=3, num_samples=8, batch_size=2, kind="iwae")
    iwae, elbo = iwae_terms((loglik - kl) + np.linspace(-1.0, 1.0, 8)[:, None])
    assert got["nll_per_token"] == pytest.approx(-iwae.sum() / (5 * block), rel=1e-12)
    assert got["sampled_elbo_nll_per_token"] == pytest.approx(-elbo.sum() / (5 * block), rel=1e-12)
    assert got["per_sequence_mean_perplexity"] == pytest.approx(np.mean(np.exp(-iwae / block)), rel=1e-12)
    assert got["kl_per_sequence"] is None and got["bound"] == "iwae" and got["samples"] == 8


def test_corpus_bound_refuses_a_bound_that_is_not_finite():
    from ltm_ppl.errors import LtmError
    from ltm_ppl.evaluate import windows_bound

    inference = KnownTerms(4)
    inference.terms = lambda batch: (np.full(len(batch), -np.inf), np.zeros(len(batch)))
    with pytest.raises(LtmError, match="not finite"):
        windows_bound(inference, np.zeros(9, int), steps=1, num_samples=1, batch_size=2)


@pytest.mark.parametrize("init", ["reference", "prior"])
@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_log_weights_average_to_the_elbo_of_the_same_q(backend, init):
    """E_q[log p(x, z) - log q(z)] = ELBO: the mean of K importance log weights matches the
    reported bound's loglik - KL of the same q (the reference init, no fast steps: q = N(0,
    e^-10 I), KL ~ 576 nats per sequence; or the prior init, q = p, KL 0) within Monte Carlo
    error. A log q or log p term dropped or of the wrong sign moves the mean by hundreds of nats;
    draws that do not follow q (log q evaluated at other points) break q = p's exact cancellation."""
    from ltm_ppl.inference import create

    inference = create(tiny_cfg("local", backend=backend, init=init))
    inference.load_weights(random_weights({k: v.shape for k, v in inference.weights().items()}, seed=51))
    batch = np.random.default_rng(52).integers(0, 64, (3, 17))
    K = 12  # not a multiple of Pyro's chunk of 8 draws
    with inference.rng_scope(0):
        log_w = inference.log_weights(batch, steps=0, num_samples=K)
        terms = inference.bound(batch, steps=0, num_samples=K)
    assert log_w.shape == (K, 3)
    elbo = terms["loglik"] - terms["kl"]
    assert np.all(terms["kl"] > 500) if init == "reference" else np.all(terms["kl"] == 0)
    assert np.all(log_w.std(0) < 0.2 * np.abs(elbo))  # weights of draws from q: no heavy tail here
    # both sides average K draws: 4 standard errors of their difference
    error = 4 * np.sqrt(2) * log_w.std(0) / np.sqrt(K) + 1e-3 * np.abs(elbo)
    assert np.all(np.abs(log_w.mean(0) - elbo) < error), (log_w.mean(0), elbo, error)


def test_log_weights_of_both_elbo_modules_are_log_p_minus_log_q_at_the_same_draws():
    """pyro_elbo.log_weights and numpyro_elbo.log_weights at injected z: log p(x | z) (the
    elbo_terms log-likelihood of the same z) + log N(z; 0, I) - log q(z), written out here."""
    import functools

    import jax.numpy as jnp
    import torch
    from helpers import twin_decoders

    from ltm_ppl.inference import numpyro_elbo, pyro_elbo
    from ltm_ppl.models.jax import program as numpyro_model
    from ltm_ppl.models.torch import program as pyro_model

    cfg, _, decoder, params = twin_decoders(61)
    rng = np.random.default_rng(62)
    B, K = 3, 2
    tokens = rng.integers(0, cfg.vocab_size, (B, cfg.block_size + 1))
    loc = (0.5 * rng.standard_normal((B, cfg.n_z, cfg.d_model))).astype(np.float32)
    log_scale = (0.3 * rng.standard_normal((B, cfg.n_z, cfg.d_model)) - 0.5).astype(np.float32)
    z = (loc + np.exp(log_scale) * rng.standard_normal((K, B, cfg.n_z, cfg.d_model))).astype(np.float32)
    normal = lambda x, m, ls: (-0.5 * ((x - m) / np.exp(ls)) ** 2 - ls - 0.5 * np.log(2 * np.pi)).sum((-1, -2))  # noqa: E731
    log_prior, log_q = normal(z, 0.0, 0.0), normal(z, loc, log_scale)

    t = {k: torch.from_numpy(v) for k, v in dict(loc=loc, log_scale=log_scale, z=z).items()}
    model = functools.partial(pyro_model.ltm_model, decoder)
    guide = functools.partial(pyro_model.local_guide, loc=t["loc"], log_scale=t["log_scale"])
    with torch.no_grad():
        got_p = pyro_elbo.log_weights(model, guide, torch.from_numpy(tokens), num_particles=K, latent_value=t["z"]).numpy()
        loglik, _ = pyro_elbo.elbo_terms(model, guide, torch.from_numpy(tokens), num_particles=K, latent_value=t["z"])
    np.testing.assert_allclose(got_p, loglik.numpy() + log_prior - log_q, rtol=1e-5)

    j = {k: jnp.asarray(v) for k, v in dict(loc=loc, log_scale=log_scale, z=z).items()}
    got_j = numpyro_elbo.log_weights(
        functools.partial(numpyro_model.ltm_model, params, cfg),
        functools.partial(numpyro_model.local_guide, loc=j["loc"], log_scale=j["log_scale"]),
        jnp.asarray(tokens), num_particles=K, latent_value=j["z"])
    np.testing.assert_allclose(np.asarray(got_j), got_p, rtol=1e-5)
