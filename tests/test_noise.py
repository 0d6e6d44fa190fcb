"""Per-sequence noise (noise.py): a row's eps depends on (seed, iteration, step, its global row)
alone, so a worker holding rows [a, b) of a global batch draws exactly what one worker draws there."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ltm_ppl import noise


def test_torch_rows_of_a_worker_are_the_global_draw_rows():
    rows = noise.Rows(seed=3, iteration=7, offset=0, total=6)
    whole = noise.torch_eps(rows, 2, 6, (2, 3), 2, "cpu")
    share = noise.torch_eps(noise.Rows(3, 7, offset=4, total=6), 2, 2, (2, 3), 2, "cpu")
    assert share.shape == (2, 2, 2, 3)
    assert np.array_equal(whole[:, 4:6].numpy(), share.numpy())


def test_torch_eps_changes_with_every_key_part():
    base = noise.torch_eps(noise.Rows(3, 7), 2, 4, (5,), 1, "cpu").numpy()
    again = noise.torch_eps(noise.Rows(3, 7), 2, 4, (5,), 1, "cpu").numpy()
    assert np.array_equal(base, again)
    for other in (noise.torch_eps(noise.Rows(4, 7), 2, 4, (5,), 1, "cpu"), noise.torch_eps(noise.Rows(3, 8), 2, 4, (5,), 1, "cpu"),
                  noise.torch_eps(noise.Rows(3, 7), 3, 4, (5,), 1, "cpu")):
        assert not np.allclose(base, other.numpy())
    assert abs(float(np.mean(base))) < 1.5 and 0.3 < float(np.std(base)) < 2.0  # standard normal draws


def test_seed_of_is_the_seed_sequences_first_64_bit_word_halved():
    """The torch generator's seed: the first 64-bit word numpy's SeedSequence makes of (seed mod
    2^32, iteration, step), shifted right by one (63 bits: a valid torch seed), for every key part."""
    for seed, iteration, step in ((3, 7, 2), (2**40 + 5, 0, noise.SLOW), (0, 123456, noise.EVAL + 1)):
        word = int(np.random.SeedSequence([seed % 2**32, iteration, step]).generate_state(1, np.uint64)[0])
        assert noise.seed_of(seed, iteration, step) == word // 2 < 2**63


def test_torch_eps_is_the_seeded_generators_standard_normal_draw():
    import torch

    eps = noise.torch_eps(noise.Rows(3, 7, offset=1, total=4), 5, 2, (3,), 2, "cpu")
    gen = torch.Generator().manual_seed(noise.seed_of(3, 7, 5))
    expected = torch.randn((2, 4, 3), generator=gen)[:, 1:3]
    assert eps.dtype == torch.float32 and eps.device == torch.device("cpu")
    assert torch.equal(eps, expected)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_torch_eps_is_drawn_on_the_device_it_is_asked_for():
    """On a GPU the generator and the draw are on the GPU (on the CPU a draw made on the wrong device
    cannot be told apart; on a GPU it would make the step raise, not a wrong number)."""
    import torch

    eps = noise.torch_eps(noise.Rows(3, 7), 2, 4, (5,), 2, "cuda")
    assert eps.device.type == "cuda"
    gen = torch.Generator(device="cuda").manual_seed(noise.seed_of(3, 7, 2))
    assert torch.equal(eps, torch.randn((2, 4, 5), generator=gen, device="cuda"))


def test_jax_row_eps_depends_on_its_row_index_only():
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(5)
    whole = np.asarray(noise.jax_eps(key, 1, jnp.arange(6), (2, 3), 2))
    part = np.asarray(noise.jax_eps(key, 1, jnp.array([4, 1]), (2, 3), 2))
    assert whole.shape == (2, 6, 2, 3)
    assert np.array_equal(part[:, 0], whole[:, 4]) and np.array_equal(part[:, 1], whole[:, 1])
    assert not np.allclose(whole[:, 0], whole[:, 1])
    assert not np.allclose(np.asarray(noise.jax_eps(key, 2, jnp.arange(6), (2, 3), 2)), whole)


def test_noise_module_imports_no_backend():
    import subprocess
    import sys

    code = "import sys, ltm_ppl.noise, ltm_ppl.distributed; print('torch' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_fast_noise_has_one_source_per_step():
    eps = np.zeros((1, 2, 3), np.float32)
    assert noise.FastNoise().source == "stream"
    assert noise.FastNoise(key=noise.Rows(1, 2)).source == "key"
    assert noise.FastNoise(key=noise.Rows(1, 2), fixed=eps).source == "fixed"  # the key still draws the start
    assert noise.FastNoise(key=noise.Rows(1, 2), per_step=eps[None]).source == "per_step"
    with pytest.raises(ValueError, match="not both"):
        noise.FastNoise(fixed=eps, per_step=eps[None])


def test_fast_noise_constructors_say_which_source_and_refuse_what_cannot_be():
    """The named constructors give the rule's four sources; the key may come with the eps (the
    published path: a key for the start, one fixed eps for the steps); what cannot work is refused
    when built, with a message naming it."""
    eps = np.zeros((1, 2, 3), np.float32)
    rows = noise.Rows(1, 2)
    assert noise.FastNoise.stream().source == "stream"
    assert noise.FastNoise.fresh(rows).source == "key" and noise.FastNoise.fresh(rows).key is rows
    published = noise.FastNoise.reused(eps, rows)
    assert published.source == "fixed" and published.key is rows and published.fixed is eps
    assert noise.FastNoise.reused(eps).key is None
    injected = noise.FastNoise.injected(eps[None], rows)
    assert injected.source == "per_step" and injected.key is rows and injected.fixed is None
    with pytest.raises(ValueError, match="needs a key"):
        noise.FastNoise.fresh(None)
    with pytest.raises(ValueError, match="needs the eps"):
        noise.FastNoise.reused(None, rows)
    with pytest.raises(ValueError, match="needs every step's eps"):
        noise.FastNoise.injected(None, rows)
    with pytest.raises(ValueError, match="not the number 7"):
        noise.FastNoise(key=7)  # a seed is not a key
    with pytest.raises(ValueError, match="fixed eps need at least 2 axes"):
        noise.FastNoise.reused(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"per_step eps need at least 3 axes \(\[steps, S, B, \*event\]\), got 2"):
        noise.FastNoise.injected(eps[0])  # one step's eps given as every step's
    with pytest.raises(dataclasses.FrozenInstanceError):
        published.key = None
