"""The optimised likelihood computes the program's math: the chunked output layer + cross-entropy
equals F.cross_entropy on full logits (values and gradients), and the ELBO of the Pyro model as
run (hidden states + chunked CE) equals, with its gradients, Pyro's own TraceMeanField_ELBO of the
same program written with pyro's Categorical over full logits, for the same draws (float32)."""
from __future__ import annotations

import functools

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

from ltm_ppl.config import RunConfig
from ltm_ppl.inference.local.pyro import PyroLocal
from ltm_ppl.inference.pyro_elbo import elbo_terms
from ltm_ppl.models.torch import likelihood as chunked_ce_torch
from ltm_ppl.models.torch.likelihood import ChunkedTokenLogProb
from ltm_ppl.models.torch.program import local_guide


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_chunked_ce_equals_full_logits_cross_entropy(rows):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    target = torch.randint(0, 50, (40,), generator=g)
    upstream = torch.randn(40, generator=g)  # a non-uniform incoming gradient
    got = ChunkedTokenLogProb.apply(hidden, weight, target, rows)
    expected = -F.cross_entropy(hidden @ weight.T, target, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    got_grads = torch.autograd.grad((got * upstream).sum(), [hidden, weight])
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [hidden, weight])
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def reference_model(decoder, tokens):
    """The LTM as a Pyro program on full logits and Pyro's own Categorical: no custom code."""
    cfg = decoder.cfg
    with pyro.plate("seq", tokens.shape[0]):
        z = pyro.sample("z", dist.Normal(tokens.new_zeros((), dtype=torch.float32), 1.0).expand([cfg.n_z, cfg.d_model]).to_event(2))
        lead = z.shape[:-2]
        inputs = tokens[..., :-1].expand(lead + tokens[..., :-1].shape[-1:]).reshape(-1, tokens.shape[-1] - 1)
        logits = decoder(inputs, z.reshape(-1, *z.shape[-2:])).view(*lead, tokens.shape[-1] - 1, -1)
        pyro.sample("x", dist.Categorical(logits=logits).to_event(1), obs=tokens[..., 1:])


@pytest.mark.parametrize("chunk_tokens", [5, 0])  # several chunks of 5 tokens (recomputed), or one (kept)
def test_pyro_elbo_and_gradients_equal_pyros_own_trace_elbo(monkeypatch, chunk_tokens):
    if chunk_tokens:
        monkeypatch.setattr(chunked_ce_torch, "CHUNK_ELEMENTS", 257 * chunk_tokens)
    cfg = RunConfig()
    m = cfg.model
    m.n_layer, m.n_head, m.d_model, m.n_z, m.block_size, m.vocab_size = 2, 2, 32, 4, 16, 257
    cfg.train.device = "cpu"
    inference = PyroLocal(cfg)
    decoder = inference.decoder
    tokens = torch.randint(0, 257, (3, 17), generator=torch.Generator().manual_seed(1))
    loc = (0.3 * torch.randn(3, 4, 32)).requires_grad_(True)
    log_scale = (0.1 * torch.randn(3, 4, 32) - 0.5).requires_grad_(True)
    guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
    wrt = [loc, log_scale, decoder.tok_emb.weight, decoder.layers[0].cross.kv.weight, decoder.final_norm.weight]

    pyro.set_rng_seed(3)
    loglik, kl = elbo_terms(inference.model, guide, tokens)
    fast = -(loglik.mean(0) - kl).sum()
    fast_grads = torch.autograd.grad(fast, wrt)

    pyro.set_rng_seed(3)  # the same draw of z
    ref = pyro.infer.TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(
        functools.partial(reference_model, decoder), guide, tokens)
    ref_grads = torch.autograd.grad(ref, wrt)

    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-4)
    for name, a, b in zip(("loc", "log_scale", "tok_emb", "cross.kv", "final_norm"), fast_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
