import pytest
import torch

from ltm_ppl.config import ModelConfig
from ltm_ppl.models.torch.decoder import Decoder, KVCache
from ltm_ppl.models.torch.generate import generate


def tiny(latent=True, **kw) -> Decoder:
    torch.manual_seed(0)
    kw.setdefault("cross_out_zero", False)  # random weights everywhere: z reaches the output
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=32, n_z=4, block_size=16, vocab_size=50, latent=latent, **kw)
    return Decoder(cfg).eval()


def test_tied_embedding_and_canonical_names():
    d = tiny()
    names = set(d.state_dict())
    assert "tok_emb.weight" in names and not any("lm_head" in n for n in names)
    assert {"layers.0.cross.kv.weight", "layers.1.attn.qkv.weight", "layers.0.mlp.gate.weight"} <= names
    assert not any(n.endswith(".bias") for n in names)
    assert not any("cross" in n for n in tiny(latent=False).state_dict())


def test_causal_latent_dependent_and_order_aware():
    d = tiny()
    idx = torch.randint(0, 50, (2, 10))
    z = torch.randn(2, 4, 32)
    base = d(idx, z)
    changed = idx.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 50
    out = d(changed, z)
    assert torch.allclose(out[:, :6], base[:, :6], atol=1e-6) and not torch.allclose(out[:, 6:], base[:, 6:])
    assert not torch.allclose(d(idx, torch.randn(2, 4, 32)), base)
    # Rotary positions on the latent keys: swapping a layer's two latent vectors changes the output
    # (without them the latents of a layer are exchangeable and the posterior label-switches).
    swapped = z[:, [1, 0, 2, 3]]
    assert not torch.allclose(d(idx, swapped), base, atol=1e-5)


@pytest.mark.parametrize("latent", [True, False])
def test_kv_cache_matches_full_forward(latent):
    d = tiny(latent=latent)
    idx = torch.randint(0, 50, (3, 12))
    z = torch.randn(3, 4, 32) if latent else None
    with torch.no_grad():
        full = d(idx, z)
        kv = d.latent_kv(z) if latent else [None, None]
        caches = [KVCache() for _ in range(2)]
        steps = [d(idx[:, :5], start=0, caches=caches, latent_kv=kv)]
        for t in range(5, 12):
            steps.append(d(idx[:, t : t + 1], start=t, caches=caches, latent_kv=kv))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [0, 5], ids=["full", "window-past-its-end"])
def test_greedy_generation_equals_uncached_argmax_decoding(window):
    d = tiny(attention_window=window)
    z = torch.randn(2, 4, 32)
    context = torch.randint(0, 50, (2, 3))
    fast = generate(d, context, z, max_new=10, temperature=0)
    seq = context
    with torch.no_grad():
        for _ in range(10):
            seq = torch.cat([seq, d(seq, z)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(fast, seq[:, 3:])


def test_generation_runs_past_the_window():
    d = tiny()
    out = generate(d, torch.zeros(1, 1, dtype=torch.long), torch.randn(1, 4, 32), max_new=40, temperature=1.0, top_k=5)
    assert out.shape == (1, 40) and int(out.max()) < 50


@pytest.mark.parametrize("window", [0, 5])
def test_chunk_appended_to_a_non_empty_cache_gives_the_uncached_logits(window):
    # A 3-token chunk after 4 cached tokens: SDPA's is_causal would align it top-left (wrong keys).
    d = tiny(attention_window=window)
    idx = torch.randint(0, 50, (2, 12))
    z = torch.randn(2, 4, 32)
    with torch.no_grad():
        full = d(idx, z)
        kv = d.latent_kv(z)
        caches = [KVCache() for _ in range(2)]
        parts = [d(idx[:, :4], start=0, caches=caches, latent_kv=kv), d(idx[:, 4:7], start=4, caches=caches, latent_kv=kv)]
        for t in range(7, 12):
            parts.append(d(idx[:, t : t + 1], start=t, caches=caches, latent_kv=kv))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_token_log_probs_are_float32_for_bf16_logits_on_the_cpu():
    from ltm_ppl.models.torch.likelihood import TokenSequence

    torch.manual_seed(0)
    logits = (8 * torch.randn(3, 20, 5000)).bfloat16()
    tokens = torch.randint(0, 5000, (3, 20))
    reference = torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None])[..., 0]
    got = TokenSequence(logits).token_log_probs(tokens)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-4)


def test_sliding_window_sees_exactly_the_last_w_tokens():
    d = tiny(attention_window=4)
    idx = torch.randint(0, 50, (1, 12))
    z = torch.randn(1, 4, 32)
    with torch.no_grad():
        base = d(idx, z)
        changed = idx.clone()
        changed[:, 2] = (changed[:, 2] + 1) % 50
        out = d(changed, z)
    # Token 2 is a key of positions 2..5 (window 4: keys i-3..i) in layer 1; two layers reach 2..8.
    assert torch.allclose(out[:, :2], base[:, :2]) and not torch.allclose(out[:, 2:6], base[:, 2:6])
    assert torch.allclose(out[:, 9:], base[:, 9:], atol=1e-6)
    full = tiny()
    full.load_state_dict(d.state_dict())
    with torch.no_grad():
        assert not torch.allclose(full(changed, z)[:, 9:], full(idx, z)[:, 9:], atol=1e-6)


def test_flex_window_attention_equals_the_masked_path():
    """The GPU path's numbers (FlexAttention with the window's block mask), run eagerly on the CPU."""
    import warnings

    from ltm_ppl.models.torch.decoder import attention_mask, flex_window_attention

    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = flex_window_attention(q, k, v, 5)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(0, 16, 16, 5, "cpu"))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_zero_cross_out_starts_as_the_ar_twin_and_still_learns_from_z():
    """`cross_out_zero`: z adds exactly nothing at initialisation (the same tokens' logits for any z,
    in both backends), while the output projection's gradient is non-zero, so z can come into use."""
    import jax
    import numpy as np

    from ltm_ppl.models.jax.decoder import init_params

    d = tiny(cross_out_zero=True)
    idx = torch.randint(0, 50, (2, 10))
    z = torch.randn(2, 4, 32)
    assert torch.equal(d(idx, z), d(idx, torch.zeros_like(z)))
    d(idx, z).logsumexp(-1).sum().backward()
    assert d.layers[0].cross.o.weight.grad.abs().sum() > 0
    assert tiny().layers[0].cross.o.weight.abs().sum() > 0  # off: every matrix random
    params = init_params(d.cfg, jax.random.PRNGKey(0))
    assert not np.any(np.asarray(params["layers.0.cross.o.weight"]))
    assert np.any(np.asarray(params["layers.0.cross.kv.weight"]))
