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
