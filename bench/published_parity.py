"""Issue 20's parity table, re-measured with the tests' hand-written published rules (tests/
test_published_decoder.py, test_published_loop.py, test_published_update.py): each row is the
largest difference between the published rule written out by hand and ltm-ppl, with the rule on
and (where there is an old setting) off.

    python bench/published_parity.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_published_decoder as decoder_test  # noqa: E402
import test_published_loop as loop_test  # noqa: E402
import test_published_update as update_test  # noqa: E402
from helpers import random_weights  # noqa: E402


def fast_loop_gap(fast_loss: str, scale: float) -> float:
    """max |mu ours - mu published| after T = 6 fast steps, same start, eps and weights N(0, scale^2) (Pyro)."""
    inference, weights, batch = loop_test.setup("pyro")
    weights = {k: v if v.ndim == 1 else (v * scale / 0.3).astype(np.float32) for k, v in weights.items()}
    inference.load_weights(weights)
    inference.cfg.inference.fast_loss = fast_loss
    tokens = torch.from_numpy(batch)
    torch.manual_seed(5)
    loc, _, _ = inference.fit_posterior(tokens, loop_test.T)
    torch.manual_seed(5)
    shape = (loop_test.B, 4, 32)
    mu0, logvar0 = 0.01 * torch.randn(shape), -5 + 0.1 * torch.randn(shape)
    eps0 = torch.randn((1, *shape))
    mu, _, _ = loop_test.published_loop(loop_test.torch_decoder(weights), tokens, mu0, logvar0, eps0[0])
    return float((loc - mu).abs().max())


def trajectory_gap(rule: str) -> float:
    """max |decoder gradient ours - published by hand| / max |published| after one slow step's
    gradient (clipped), Pyro, fast_loss "sum"."""
    from ltm_ppl import noise
    from ltm_ppl.inference import create
    from ltm_ppl.inference.local.pyro import initial_local

    cfg = update_test.trajectory_cfg("pyro")
    cfg.train.slow_gradient = rule
    inference = create(cfg)
    weights = random_weights({k: v.shape for k, v in inference.weights().items()}, seed=31)
    inference.load_weights(weights)
    B = update_test.B
    batch = np.random.default_rng(32).integers(0, 64, (B, 17))
    shape = (cfg.model.n_z, cfg.model.d_model)
    rows = noise.Rows(cfg.train.seed, 0, 0, B)
    loc0, log_scale0 = initial_local(B, shape, cfg.inference, "cpu", rows)
    eps = noise.torch_eps(rows, noise.FIXED, B, shape, 1, "cpu")[0]
    expected, _ = update_test.by_hand(weights, cfg, torch.from_numpy(batch), loc0, 2 * log_scale0, eps)
    inference.step(batch)
    got = {n: p.grad.numpy() for n, p in inference.decoder.named_parameters()}
    scale = max(np.abs(v).max() for v in expected.values())
    return max(float(np.abs(got[n] - expected[n]).max()) for n in expected) / scale


def main():
    torch.set_num_threads(1)
    print("| what | published rule on | old setting |")
    print("|---|---|---|")
    for scale in (0.02, 0.3):
        print(f"| latent keys' rotary positions, weights N(0, {scale}^2): max |log p diff| per token | "
              f"{decoder_test.gap('published', scale):.1e} | {decoder_test.gap('per_layer', scale):.1e} (per_layer) |")
    for scale in (0.02, 0.3):
        print(f"| fast-loop loss scale, weights N(0, {scale}^2): max |mu diff| after 6 steps | "
              f"{fast_loop_gap('sum', scale):.1e} | {fast_loop_gap('per_token', scale):.1e} (per_token) |")
    print(f"| slow update: max |grad diff| / max |grad| after one step | {trajectory_gap('trajectory'):.1e} | "
          f"{trajectory_gap('elbo'):.1e} (elbo) |")


if __name__ == "__main__":
    main()
