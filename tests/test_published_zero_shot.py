"""The published zero-shot number (sampling/zero-shot-ppl/sample_owt_0shot.py at commit 3217b8c, with
PosteriorOptimizer._adamVI and model.py's elbo(eval_mode=True)), re-implemented from reading in
tests/published_reference.zero_shot: on an imported model it is figure 3 of docs/replication.md
(the fixed-noise per-sequence figure), and its KL never falls below bench/kl_floor.py's floor."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import load_bench
from published_reference import ARGS, checkpoint_dict, published_model, zero_shot

from ltm_ppl.published_checkpoint import import_checkpoint


def kl_floor_module():
    return load_bench("kl_floor")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    model = published_model(seed=7)
    folder = tmp_path_factory.mktemp("zero-shot")
    torch.save(checkpoint_dict(model), folder / "ckpt.pt")
    import_checkpoint(folder / "ckpt.pt", folder / "run")
    return model, folder / "run"


def chunks(batch=3, seed=8):
    """Chunks of max_seq_len + 1 tokens: the published script feeds x = chunk[:-1], y = chunk[1:]."""
    return torch.randint(0, 50257, (batch, ARGS["max_seq_len"] + 1), generator=torch.Generator().manual_seed(seed))


def test_published_zero_shot_number_is_the_fixed_noise_figure(imported, torch_one_thread):
    """Same start, same eps: the published script's number is ltm-ppl's `eval --fixed-noise` figure
    (3), per sequence; it carries the whole analytic KL, so it is not the no-KL figure (4)."""
    from ltm_ppl.eval_runs import open_run

    model, run = imported
    opened = open_run(run, {"train.backend": "pyro", "train.device": "cpu"})
    inference, cfg = opened.inference, opened.cfg
    steps = cfg.inference.eval_steps
    batch = chunks().numpy()
    shape = (len(batch), cfg.model.n_z, cfg.model.d_model)
    torch.manual_seed(9)
    terms = inference.bound(batch, steps, at_fast_noise=True)
    torch.manual_seed(9)  # ltm-ppl's published start draws mu, then log variance, then the one eps
    mu0, logvar0 = 0.01 * torch.randn(shape), -5 + 0.1 * torch.randn(shape)
    eps = torch.randn((1, *shape))[0]
    theirs = zero_shot(model, torch.from_numpy(batch), mu0, logvar0, eps, steps, cfg.inference.fast_lr)
    N = batch.shape[1] - 1
    ours = np.exp(-(terms["loglik"] - terms["kl"]) / N)
    published = torch.exp((theirs["ce"] + theirs["kl"]) / N).numpy()
    np.testing.assert_allclose(ours, published, rtol=1e-4)
    assert np.mean(ours) == pytest.approx(theirs["per_sequence_perplexity"], rel=1e-4)
    reconstruction = np.exp(theirs["ce"].numpy() / N)
    assert (published > reconstruction * np.exp(theirs["kl"].numpy() / N) * 0.999).all()  # the KL is in it


def test_zero_shot_kl_never_falls_below_the_adam_floor(torch_one_thread):
    """16 published fast steps with a decoder whose gradients dwarf the KL's: the KL per token stays
    above bench/kl_floor.adam_floor (a floor for any gradients), and the KL-only loop sits just
    above that floor too."""
    floor_of = kl_floor_module().adam_floor
    model = published_model(seed=10)
    batch = chunks(batch=2, seed=11)
    shape = (2, ARGS["max_z_len"], ARGS["dim"])
    gen = torch.Generator().manual_seed(12)
    mu0, logvar0 = 0.01 * torch.randn(shape, generator=gen), -5 + 0.1 * torch.randn(shape, generator=gen)
    eps = torch.randn(shape, generator=gen)
    N, dims = ARGS["max_seq_len"], ARGS["max_z_len"] * ARGS["dim"]
    result = zero_shot(model, batch, mu0, logvar0, eps, 16, 0.34)
    floor = floor_of(dims, 16, N)
    assert result["kl"].min().item() / N >= floor["kl_per_token_at_least"]
    assert result["logvar"].mean().item() <= floor["log_variance_at_most"] + 1e-4
    assert (result["mu"] - mu0).abs().max() > 0.5  # the decoder did pull q
    kl_only = floor_of.__globals__["kl_floor"](ARGS["max_z_len"], ARGS["dim"], 16, N, 0.34, 2, seed=0)
    assert floor["kl_per_token_at_least"] <= kl_only["kl_per_token_after"] < 1.1 * floor["kl_per_token_at_least"]


def test_the_floor_at_the_papers_shape():
    """LTM-S/M (24 x 512 latent dims, T 16, lr 0.34) on 1023-token chunks: at least 5.19 nats/token
    of KL whatever the decoder, so the published script cannot give 3.47 there."""
    floor = kl_floor_module().adam_floor(24 * 512, 16, 1023)
    assert floor["kl_per_token_at_least"] == pytest.approx(5.194, abs=1e-3)
    assert math.exp(floor["kl_per_token_at_least"]) > 180
