"""Per-sequence noise (noise.py): a row's eps depends on (seed, iteration, step, its global row)
alone, so a worker holding rows [a, b) of a global batch draws exactly what one worker draws there."""
from __future__ import annotations

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
