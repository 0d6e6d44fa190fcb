"""The NumPyro backend's slow optimiser and its state: AdamW (optax) with torch's semantics
(weight decay on matrices only, torch's gradient clipping, the learning rate passed per
iteration), the guard that keeps the old state after a non-finite step, and the optax state as
flat numpy arrays for optimizer.safetensors and back. Nothing here imports torch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..errors import LtmError


def slow_optimizer(train_cfg) -> optax.GradientTransformation:
    """AdamW without its learning rate (passed per iteration): torch.optim.AdamW's update, with
    weight decay only on parameters with ndim >= 2. Apply as params - lr * update."""
    return optax.chain(
        optax.scale_by_adam(b1=train_cfg.beta1, b2=train_cfg.beta2, eps=1e-8),
        optax.add_decayed_weights(train_cfg.weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
    )


def clip_like_torch(grads, max_norm: float):
    """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)); returns the norm
    before clipping. max_norm 0 disables clipping."""
    norm = optax.tree.norm(grads)
    if not max_norm:
        return grads, norm
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, grads), norm


def apply_update(train_cfg, optimizer, params, opt_state, grads, lr):
    """One AdamW step (clipped); returns new params, new state and the unclipped gradient norm."""
    grads, norm = clip_like_torch(grads, train_cfg.grad_clip)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
    return params, opt_state, norm


def _path_name(path) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def flatten_state(tree, prefix: str) -> dict[str, np.ndarray]:
    """An optax state (any pytree of arrays) as {prefix/path: numpy array}."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {f"{prefix}/{_path_name(path)}": np.asarray(leaf) for path, leaf in leaves}


def unflatten_state(template, tensors: dict[str, np.ndarray], prefix: str, device):
    """The inverse of flatten_state against a template state of the same structure."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    values = []
    for path, leaf in leaves:
        name = f"{prefix}/{_path_name(path)}"
        if name not in tensors:
            raise LtmError(f"optimizer.safetensors lacks tensor {name}")
        value = np.asarray(tensors[name])
        if leaf.ndim == 0 and value.size == 1:  # checkpoint.save_checkpoint stores scalars as [1]
            value = value.reshape(())
        if value.shape != leaf.shape:
            raise LtmError(f"tensor {name} in optimizer.safetensors has shape {list(value.shape)}, the config needs {list(leaf.shape)}")
        values.append(jax.device_put(value.astype(leaf.dtype), device))
    return jax.tree_util.tree_unflatten(treedef, values)


def guarded(ok, new, old):
    """new where ok (a scalar bool) else old, leaf by leaf: a non-finite loss leaves state untouched."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
