"""What every NumPyro inference method shares: the JAX decoder's parameters (a flat dict in the
canonical torch names and layouts), its device and precision, the slow AdamW optimiser (optax),
weights and optimiser state as numpy arrays, the PRNG key, and generation. Methods subclass it
and add `step`, `bound`, `posterior_latents`.

The mirror of pyro_backend.py; nothing here imports torch.
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..config import RunConfig
from ..errors import LtmError
from ..models import jax_decoder
from .schedules import slow_lr


def resolve_device(name: str):
    if name == "cpu":
        return jax.devices("cpu")[0]
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if name == "cuda" and not gpus:
        raise LtmError("--device cuda asked for, but jax sees no CUDA device (install jax[cuda12] or jax[cuda13])")
    return gpus[0] if gpus else jax.devices("cpu")[0]


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


class NumPyroBackend:
    backend = "numpyro"

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        # bf16 matmuls/attention on GPU (torch's autocast); parameters, optimiser, log-probs float32.
        self.dtype = jnp.bfloat16 if self.device.platform == "gpu" else jnp.float32
        init_key, train_key = jax.random.split(jax.random.PRNGKey(cfg.train.seed))
        self.key = jax.device_put(train_key, self.device)
        self.params = jax.device_put(jax_decoder.init_params(cfg.model, init_key), self.device)
        self.optimizer = slow_optimizer(cfg.train)
        self.opt_state = jax.device_put(self.optimizer.init(self.params), self.device)
        self.iteration = 0

    # ----- randomness and inputs --------------------------------------------------------------
    def next_key(self):
        self.key, sub = jax.random.split(self.key)
        return sub

    @contextlib.contextmanager
    def rng_scope(self, seed: int):
        """Draws inside use PRNGKey(seed) and leave the training key untouched."""
        saved = self.key
        self.key = jax.device_put(jax.random.PRNGKey(seed), self.device)
        try:
            yield
        finally:
            self.key = saved

    def tensor(self, tokens: np.ndarray):
        return jax.device_put(np.asarray(tokens, dtype=np.int32), self.device)

    def array(self, values):
        return None if values is None else jax.device_put(np.asarray(values, dtype=np.float32), self.device)

    def slow_lr(self) -> float:
        return slow_lr(self.iteration, self.cfg.train)

    # ----- state in canonical names -----------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(self.params[name], dtype=np.float32) for name in jax_decoder.param_shapes(self.cfg.model)}

    def load_weights(self, arrays: dict[str, np.ndarray]) -> None:
        expected = jax_decoder.param_shapes(self.cfg.model)
        for name, shape in expected.items():
            if name not in arrays:
                raise LtmError(f"weights.safetensors lacks tensor {name}")
            if tuple(arrays[name].shape) != tuple(shape):
                raise LtmError(
                    f"tensor {name} in weights.safetensors has shape {list(arrays[name].shape)}, the config needs {list(shape)}"
                )
        extra = sorted(set(arrays) - set(expected))
        if extra:
            raise LtmError(f"weights.safetensors has tensor {extra[0]}, which the config's model lacks")
        self.params = jax.device_put({k: np.asarray(arrays[k], dtype=np.float32) for k in expected}, self.device)

    def optimizer_state(self) -> tuple[dict[str, np.ndarray], dict]:
        tensors = flatten_state(self.opt_state, "opt")
        tensors["rng/jax"] = np.asarray(self.key)  # a raw uint32[2] threefry key
        return tensors, {"iteration": self.iteration}

    def load_optimizer_state(self, tensors: dict[str, np.ndarray], scalars: dict) -> None:
        self.opt_state = unflatten_state(self.optimizer.init(self.params), tensors, "opt", self.device)
        if "rng/jax" not in tensors:
            raise LtmError("optimizer.safetensors lacks tensor rng/jax")
        key = np.asarray(tensors["rng/jax"]).astype(np.uint32)
        self.key = jax.device_put(key, self.device)
        self.iteration = int(scalars["iteration"])

    # ----- generation -------------------------------------------------------------------------
    def prior_latents(self, num: int):
        if not self.cfg.model.latent:
            return None
        return jax.random.normal(self.next_key(), (num, self.cfg.model.n_z, self.cfg.model.d_model), jnp.float32)

    def generate(self, context: np.ndarray, z, max_new: int, temperature: float, top_k: int) -> np.ndarray:
        return jax_decoder.generate(
            self.params, self.cfg.model, self.tensor(context), z, max_new, temperature, top_k, self.next_key(), self.dtype
        )
