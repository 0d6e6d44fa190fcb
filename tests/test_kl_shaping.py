"""KL warm-up and free bits for `local`: they shape the training fit of q (and the logged training
loss) only; every reported bound is the plain ELBO, and the loss stops being a bound while shaped."""
import json

import numpy as np
import pytest
import torch

from ltm_ppl.config import load_toml
from ltm_ppl.inference import descriptor
from ltm_ppl.inference.schedules import kl_shape

from .helpers import host_metrics

B, T, VOCAB = 4, 33, 257


def _cfg(tiny_toml, warmup=0, free_bits=0.0, backend="pyro"):
    cfg = load_toml(tiny_toml)
    cfg.model.vocab_size = VOCAB
    cfg.train.backend = backend
    cfg.inference.kl_warmup_iters, cfg.inference.free_bits = warmup, free_bits
    return cfg


def _batch(seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(B, T))


def test_schedule_values(tiny_toml):
    cfg = _cfg(tiny_toml, warmup=4, free_bits=0.5)
    assert [kl_shape(i, cfg.inference) for i in range(6)] == [(0.25, 0.5), (0.5, 0.5), (0.75, 0.5), (1.0, 0.5), (1.0, 0.5), (1.0, 0.5)]
    assert kl_shape(0, _cfg(tiny_toml).inference) is None  # neither configured: the plain ELBO
    assert kl_shape(7, _cfg(tiny_toml, warmup=2).inference) == (1.0, 0.0)


def test_either_option_alone_shapes_the_objective(tiny_toml):
    """A one-iteration warm-up, or free bits below one nat with no warm-up, is a configured
    shaping (the record gets its `beta`; the free bits floor each vector's KL), not the plain ELBO."""
    assert [kl_shape(i, _cfg(tiny_toml, warmup=1).inference) for i in range(2)] == [(1.0, 0.0), (1.0, 0.0)]
    assert [kl_shape(i, _cfg(tiny_toml, free_bits=0.5).inference) for i in range(2)] == [(1.0, 0.5), (1.0, 0.5)]
    assert kl_shape(3, _cfg(tiny_toml, warmup=0, free_bits=0.0).inference) is None


def test_local_loss_is_bound_flips_while_shaped(tiny_toml):
    is_bound = descriptor("local").loss_is_bound
    assert is_bound(_cfg(tiny_toml), {"loss": 1.0})
    assert not is_bound(_cfg(tiny_toml, warmup=3), {"loss": 1.0, "beta": 0.5})
    assert is_bound(_cfg(tiny_toml, warmup=3), {"loss": 1.0, "beta": 1.0})  # after the warm-up
    assert not is_bound(_cfg(tiny_toml, free_bits=0.5), {"loss": 1.0, "beta": 1.0})


def test_shaped_kl_is_the_analytic_kl_at_unit_weight_and_floors_each_vector():
    import jax.numpy as jnp

    from ltm_ppl.inference.gaussian import shaped_kl

    def shaped_torch(*args):
        return shaped_kl(*args, torch)

    def shaped_jax(*args):
        return shaped_kl(*args, jnp)

    rng = np.random.default_rng(0)
    loc, log_scale = rng.normal(0, 0.5, (B, 4, 8)), rng.normal(-0.3, 0.2, (B, 4, 8))
    per_vector = 0.5 * (loc**2 + np.exp(2 * log_scale) - 1 - 2 * log_scale).sum(-1)  # [B, n_z]
    floor = np.median(per_vector)
    expected = 0.3 * np.maximum(per_vector, floor).sum(-1)
    got_torch = shaped_torch(torch.tensor(loc), torch.tensor(log_scale), 0.3, floor).numpy()
    got_jax = np.asarray(shaped_jax(loc, log_scale, 0.3, floor))
    np.testing.assert_allclose(got_torch, expected, rtol=1e-6)
    np.testing.assert_allclose(got_jax, expected, rtol=1e-5)
    np.testing.assert_allclose(shaped_torch(torch.tensor(loc), torch.tensor(log_scale), 1.0, 0.0).numpy(), per_vector.sum(-1), rtol=1e-6)


def test_free_bits_let_the_training_fit_of_q_spend_more_kl(tiny_toml):
    """Below the floor the KL has no gradient, so the fitted q moves further from the prior."""
    from ltm_ppl.inference.local.pyro import PyroLocal

    inference = PyroLocal(_cfg(tiny_toml))
    tokens = inference.tensor(_batch())
    noise = torch.randn((6, 1, B, 4, 32), generator=torch.Generator().manual_seed(3))
    kls = []
    for shaping in (None, (1.0, 0.0), (1.0, 50.0)):
        loc, log_scale, _ = inference.fit_posterior(tokens, 6, fast_noise=noise, kl_shaping=shaping)
        kls.append(float((0.5 * (loc**2 + torch.exp(2 * log_scale) - 1 - 2 * log_scale)).sum()))
    assert kls[1] == pytest.approx(kls[0], rel=1e-4)  # unit weight, no floor: the plain fit
    assert kls[2] > 1.5 * kls[0]


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_reported_bound_unchanged_and_training_changed(tiny_toml, backend, jax_caches):
    from ltm_ppl.inference import create

    bounds, losses, weights = [], [], []
    for warmup, free_bits in ((0, 0.0), (5, 2.0)):
        inference = create(_cfg(tiny_toml, warmup, free_bits, backend))
        with inference.rng_scope(1):
            bound = inference.bound(_batch(1), steps=3, num_samples=2)
        with inference.rng_scope(0):
            metrics = host_metrics(inference.step(_batch(0)))  # device scalars by contract
        bounds.append(bound)
        losses.append(metrics)
        weights.append(np.asarray(inference.weights()["tok_emb.weight"]))
    np.testing.assert_array_equal(bounds[0]["loglik"], bounds[1]["loglik"])  # eval never shaped
    np.testing.assert_array_equal(bounds[0]["kl"], bounds[1]["kl"])
    assert "beta" not in losses[0] and losses[1]["beta"] == pytest.approx(0.2)
    assert losses[1]["loss"] != pytest.approx(losses[0]["loss"], rel=1e-4)  # the shaped training loss
    assert not np.allclose(weights[0], weights[1])  # and the decoder learned from another q


def test_fit_writes_no_ppl_while_shaped(tmp_path, tiny_toml):
    from ltm_ppl.config import apply_overrides
    from ltm_ppl.train import fit

    cfg = apply_overrides(load_toml(tiny_toml), {"train.iters": 4, "inference.kl_warmup_iters": 2,
                                                 "train.eval_interval": 4, "train.checkpoint_interval": 4})
    fit(cfg, out=str(tmp_path / "run"), progress=False, echo=lambda s: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "split" not in r]
    assert [("ppl" in r) for r in steps] == [False, True, True, True]
    assert [r["beta"] for r in steps] == [0.5, 1.0, 1.0, 1.0]
