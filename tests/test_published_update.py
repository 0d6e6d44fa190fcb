"""The published training signal, written out by hand on a tiny model (issue 20):

- the residual projections' init: std 0.02 / sqrt(2 n_layer) for every attention output projection
  (self and cross) and the MLP's up projection (the authors' wo and w3), 0.02 elsewhere;
- train.slow_gradient "trajectory" (train_ltm.py: the fast loop's backward passes reach the
  decoder, whose gradients are zeroed only after the slow step): the decoder's gradient is the SUM
  over the T fast steps of the gradients of the fast loss at each fast iterate (one eps), plus the
  mean cross-entropy's at the final z = mu + sigma eps with that eps, clipped at 1.0, then AdamW.

The summed fast-loop loss scale is checked in tests/test_published_loop.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_weights, run_cli, tiny_cfg

from ltm_ppl.presets import preset_settings

T, B = 3, 3
RESIDUAL = ("attn.o.weight", "cross.o.weight", "mlp.up.weight")


def _stds(named) -> dict[str, float]:
    return {name: float(np.std(np.asarray(v))) for name, v in named.items() if np.asarray(v).ndim == 2}


@pytest.mark.parametrize("rule", ["flat", "scaled"])
def test_residual_projection_init_stds_in_both_backends(rule):
    import jax

    from ltm_ppl.config import ModelConfig
    from ltm_ppl.models.jax.decoder import init_params
    from ltm_ppl.models.torch.decoder import Decoder

    cfg = ModelConfig(n_layer=3, d_model=192, n_head=4, n_z=6, vocab_size=512, cross_out_zero=False, residual_init=rule)
    torch.manual_seed(0)
    torch_stds = _stds({k: v.detach().numpy() for k, v in Decoder(cfg).state_dict().items()})
    jax_stds = _stds(init_params(cfg, jax.random.PRNGKey(0)))
    scaled = 0.02 / math.sqrt(2 * 3)
    for stds in (torch_stds, jax_stds):
        assert sum(name.endswith(RESIDUAL) for name in stds) == 3 * 3  # three per layer
        for name, std in stds.items():
            expected = scaled if rule == "scaled" and name.endswith(RESIDUAL) else 0.02
            assert std == pytest.approx(expected, rel=0.03), name
    # cross_out_zero still starts z's contribution at exactly 0
    zeroed = Decoder(ModelConfig(n_layer=3, n_z=6, residual_init=rule))
    assert all(float(layer.cross.o.weight.detach().abs().max()) == 0 for layer in zeroed.layers)


def test_paper_preset_sets_the_published_training_signal():
    settings = preset_settings("paper")
    assert settings["inference.fast_loss"] == "sum" and settings["model.residual_init"] == "scaled"
    assert settings["train.slow_gradient"] == "trajectory" and settings["model.latent_rope"] == "published"


def trajectory_cfg(backend: str, fast_loss: str = "sum"):
    cfg = tiny_cfg(backend=backend)
    for dotted, value in preset_settings("paper").items():
        section, name = dotted.split(".")
        if section == "inference":
            setattr(cfg.inference, name, value)
    cfg.inference.steps, cfg.inference.fast_loss = T, fast_loss
    cfg.train.slow_gradient = "trajectory"
    return cfg


def by_hand(weights, cfg, tokens, mu, logvar, eps):
    """The published update's decoder gradient, by hand: AdamW fast steps on (mu, log variance)
    with one eps; each step's loss differentiated w.r.t. the weights too and summed; plus the mean
    cross-entropy's at the final z; then clipped at 1.0. Returns ({name: clipped}, unclipped norm)."""
    from ltm_ppl.models.torch.decoder import Decoder

    decoder = Decoder(cfg.model)
    decoder.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    names = [n for n, _ in decoder.named_parameters()]
    weights_ = list(decoder.parameters())
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    divisor = 1.0 if cfg.inference.fast_loss == "sum" else tokens.shape[1] - 1

    def ce(z, reduction):
        return F.cross_entropy(decoder(inputs, z).transpose(1, 2), targets, reduction=reduction)

    total = [torch.zeros_like(w) for w in weights_]
    params, m, v = [mu.clone(), logvar.clone()], [0, 0], [0, 0]
    lr0, wd = cfg.inference.fast_lr, cfg.inference.fast_weight_decay
    for s in range(T):
        lr = lr0 / 10 + 0.5 * (1 + math.cos(math.pi * s / T)) * (lr0 - lr0 / 10)
        mu_, lv = (p.detach().requires_grad_(True) for p in params)
        kl = 0.5 * (mu_**2 + lv.exp() - lv - 1).sum()
        loss = (ce(mu_ + torch.exp(0.5 * lv) * eps, "sum") + kl) / divisor
        grads = torch.autograd.grad(loss, [mu_, lv] + weights_)
        total = [t + g for t, g in zip(total, grads[2:])]
        for i, g in enumerate(grads[:2]):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            step = lr * (m[i] / (1 - 0.9 ** (s + 1))) / ((v[i] / (1 - 0.999 ** (s + 1))).sqrt() + 1e-8)
            params[i] = params[i].detach() * (1 - lr * wd) - step
    z = params[0] + torch.exp(0.5 * params[1]) * eps
    total = [t + g for t, g in zip(total, torch.autograd.grad(ce(z.detach(), "mean"), weights_))]
    norm = float(torch.sqrt(sum((t**2).sum() for t in total)))
    scale = min(1.0, 1.0 / (norm + 1e-6))
    return {n: (t * scale).numpy() for n, t in zip(names, total)}, norm


@pytest.mark.parametrize("fast_loss", ["sum", "per_token"])
def test_pyro_trajectory_update_is_the_hand_written_one(fast_loss, torch_one_thread):
    from ltm_ppl import noise
    from ltm_ppl.inference import create
    from ltm_ppl.inference.local.pyro import initial_local

    cfg = trajectory_cfg("pyro", fast_loss)
    inference = create(cfg)
    weights = random_weights({k: v.shape for k, v in inference.weights().items()}, seed=31)
    inference.load_weights(weights)
    batch = np.random.default_rng(32).integers(0, 64, (B, 17))
    shape = (cfg.model.n_z, cfg.model.d_model)
    # The step's start and its one eps are drawn from the keyed noise of iteration 0 (noise.py).
    rows = noise.Rows(cfg.train.seed, 0, 0, B)
    loc0, log_scale0 = initial_local(B, shape, cfg.inference, "cpu", rows)
    eps = noise.torch_eps(rows, noise.FIXED, B, shape, 1, "cpu")[0]
    expected, norm = by_hand(weights, cfg, torch.from_numpy(batch), loc0, 2 * log_scale0, eps)
    metrics = inference.step(batch)
    assert norm > 1.0 and float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-4)  # the clip binds
    got = {n: p.grad.numpy() for n, p in inference.decoder.named_parameters()}
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=2e-3, atol=1e-6, err_msg=name)
    # ...and AdamW's first step moved each weight by lr (sign of its gradient) after decoupled decay.
    lr, wd = float(metrics["lr"]), cfg.train.weight_decay
    for name, w0 in weights.items():
        g = expected[name]
        decay = wd if w0.ndim >= 2 else 0.0
        w1 = w0 * (1 - lr * decay) - lr * g / (np.abs(g) + 1e-8)
        # (a gradient entry near Adam's eps 1e-8 moves by less than lr: the tolerance is a share of lr)
        np.testing.assert_allclose(inference.weights()[name], w1, rtol=1e-6, atol=0.05 * lr, err_msg=name)
    # The next iteration starts from zero gradients: nothing of this step's sum carries over.
    weights = inference.weights()
    rows = noise.Rows(cfg.train.seed, 1, 0, B)
    loc0, log_scale0 = initial_local(B, shape, cfg.inference, "cpu", rows)
    eps = noise.torch_eps(rows, noise.FIXED, B, shape, 1, "cpu")[0]
    expected, _ = by_hand(weights, cfg, torch.from_numpy(batch), loc0, 2 * log_scale0, eps)
    inference.step(batch)
    for name, p in inference.decoder.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), expected[name], rtol=2e-3, atol=1e-6, err_msg=name)


@pytest.mark.usefixtures("jax_caches")
@pytest.mark.parametrize("fast_loss", ["sum", "per_token"])
def test_numpyro_trajectory_gradient_is_the_hand_written_one(fast_loss, torch_one_thread):
    import jax.numpy as jnp

    from ltm_ppl.inference import create
    from ltm_ppl.inference.local.numpyro import fast_lrs
    from ltm_ppl.inference.numpyro_optim import clip_like_torch

    cfg = trajectory_cfg("numpyro", fast_loss)
    inference = create(cfg)
    weights = random_weights({k: v.shape for k, v in inference.weights().items()}, seed=31)
    inference.load_weights(weights)
    rng = np.random.default_rng(33)
    batch = rng.integers(0, 64, (B, 17))
    shape = (B, cfg.model.n_z, cfg.model.d_model)
    mu0 = (0.01 * rng.standard_normal(shape)).astype(np.float32)
    logvar0 = (-5 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    eps = rng.standard_normal((1, *shape)).astype(np.float32)
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    _, _, grads = inference.programs.trajectory_gradient(
        params, jnp.asarray(batch), jnp.asarray(fast_lrs(T, cfg.inference)), jnp.asarray(eps), start=(mu0, 0.5 * logvar0))
    clipped, norm = clip_like_torch(grads, cfg.train.grad_clip)
    expected, hand_norm = by_hand(weights, cfg, torch.from_numpy(batch), torch.from_numpy(mu0), torch.from_numpy(logvar0),
                                  torch.from_numpy(eps[0]))
    assert hand_norm > 1.0 and float(norm) == pytest.approx(hand_norm, rel=1e-4)
    for name in expected:
        np.testing.assert_allclose(np.asarray(clipped[name]), expected[name], rtol=2e-3, atol=1e-6, err_msg=name)
    # The compiled training step runs it and changes the weights.
    before = inference.weights()
    metrics = inference.step(batch)
    assert bool(metrics["finite"]) and float(metrics["grad_norm"]) > 1.0
    assert all(not np.array_equal(before[k], v) for k, v in inference.weights().items())


def test_the_trajectory_gradient_is_not_the_elbo_step(torch_one_thread):
    """The two slow gradients differ on the same weights and batch (the option has teeth), and the
    reported bound does not read it: eval never uses slow_gradient."""
    from ltm_ppl.inference import create

    batch = np.random.default_rng(34).integers(0, 64, (B, 17))
    grads, bounds = {}, {}
    for rule in ("elbo", "trajectory"):
        cfg = trajectory_cfg("pyro")
        cfg.train.slow_gradient = rule
        inference = create(cfg)
        weights = random_weights({k: v.shape for k, v in inference.weights().items()}, seed=35)
        inference.load_weights(weights)
        torch.manual_seed(3)
        bounds[rule] = inference.bound(batch, T)
        inference.step(batch)
        grads[rule] = inference.decoder.tok_emb.weight.grad.clone()
    np.testing.assert_array_equal(bounds["elbo"]["loglik"], bounds["trajectory"]["loglik"])
    assert float((grads["elbo"] - grads["trajectory"]).abs().max()) > 1e-3


@pytest.mark.parametrize("args, fragment", [
    (["--inference", "none"], 'train.slow_gradient = "trajectory" is a training signal of --inference local'),
    (["--init", "amortized"], "does not train an encoder"),
])
def test_fit_refuses_the_trajectory_update_where_it_has_no_meaning(tmp_path, tiny_toml, args, fragment):
    toml = tmp_path / "c.toml"
    toml.write_text(tiny_toml.read_text().replace("[train]", '[train]\nslow_gradient = "trajectory"'))
    out = tmp_path / "run"
    result = run_cli("fit", "--config", toml, "--out", out, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not out.exists()


def test_the_trajectory_update_trains_a_run_through_the_cli(tmp_path, tiny_toml):
    toml = tmp_path / "c.toml"
    toml.write_text(tiny_toml.read_text().replace("[train]", '[train]\nslow_gradient = "trajectory"'))
    out = tmp_path / "run"
    result = run_cli("fit", "--config", toml, "--out", out, "--iters", "3", "--json")
    assert result.exit_code == 0, result.output
    import json

    assert json.loads((out / "config.json").read_text())["config"]["train"]["slow_gradient"] == "trajectory"
