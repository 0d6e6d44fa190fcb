"""The generic NumPyro base of every inference method (protocol.Inference), the mirror of
pyro_backend.py: the JAX decoder's parameters (a flat dict in the canonical torch names and
layouts; the amortized encoder's `encoder.*` parameters in the same dict where the method has
one), its device and precision, the slow AdamW optimiser (optax) over every parameter, weights and
optimiser state as numpy arrays, the PRNG key, generation, and `Programs`: the compiled pieces
(model, guides, ELBO, draws from a Gaussian q, the guarded AdamW update, and `bound`,
`log_weights`, `posterior`, `posterior_latents` derived from a method's hooks):

    Programs.proposal(params, data, key, fast_noise, fit, static) -> (loc, log_scale, eps or None)
    Programs.chains(params, data, key, fast_noise, warmup, draws, chains, keep_z) -> dict, chain
        methods only, with the keys of the Pyro hook: z [C, D, B, *event] (when keep_z), log_joint
        and accept_prob [C, D, B], step_size [C, B], last [C, B, *event]
    NumPyroBackend.fit_args(steps) -> (fit, static): what the proposal needs for `steps` inner
        steps, as an array argument (local: the fast step sizes) and a hashable static one
    NumPyroBackend.step(batch) -> metrics

A method file subclasses both; with `model=LatentModel(...)` the base runs a method on that model
instead of the LTM (no decoder). Nothing here imports torch.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..config import RunConfig
from ..distributed import world
from ..errors import LtmError
from ..models.jax import decoder as jax_decoder, encoder as jax_encoder, generate as jax_generate
from ..models.jax.program import amortized_guide, local_guide, ltm_model
from .latent_model import LatentModel
from .numpyro_elbo import elbo_terms, log_joint
from .registry import needs_encoder
from .schedules import slow_lr
from .weights import NO_LATENT, checked_weights


# Keys of a chains hook's result that `posterior` does not report (the rest are sample stats).
CHAIN_INTERNALS = ("last", "last_log_joint", "warmup_accept_prob")


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


def placements(device):
    """(where weights go, where batches go): the device and None on one device; on a Mesh of
    several (distributed.world), replicated weights and batches split along the "batch" axis."""
    mesh = world().mesh
    if mesh is None:
        return device, None
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("batch"))


def host(x) -> np.ndarray:
    """A device array on the host, gathered from every process when it is split across them."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


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


class Programs:
    """The compiled programs of one (model, inference, optimiser, precision) setting, shared by
    every inference object with that setting (`programs_for`), so a second instance (evaluation
    after training, tests) reuses the traces; jit recompiles only for new shapes. Subclasses
    define `build()`, which jits their methods."""

    def __init__(self, model_cfg, inf_cfg, train_cfg, dtype, platform: str, injected: LatentModel | None = None):
        self.model_cfg, self.inf, self.train = model_cfg, inf_cfg, train_cfg
        self.dtype = dtype
        self.injected = injected
        self.shape = (model_cfg.n_z, model_cfg.d_model) if injected is None else tuple(injected.event_shape)
        self.sites = {"latent": "z", "obs": "x"} if injected is None else {"latent": injected.latent, "obs": injected.obs}
        self.optimizer = slow_optimizer(train_cfg)
        # On accelerators the step updates weights and optimiser state in place (donated buffers).
        self.donate = (0, 1) if platform != "cpu" else ()
        # The interface, derived from the hooks: jit compiles on first call, so unused ones cost nothing.
        self.bound = jax.jit(self._bound, static_argnames=("num_samples", "static"))
        self.log_weights = jax.jit(self._log_weights, static_argnames=("num_samples", "static"))
        self.posterior = jax.jit(self._posterior, static_argnames=("num_draws", "static"))
        self.posterior_latents = jax.jit(self._posterior_latents, static_argnames=("static",))
        self.proposal_program = jax.jit(self.proposal, static_argnames=("static",))
        self.run_chains = jax.jit(self.chains, static_argnames=("warmup", "draws", "chains", "keep_z"))
        self.variational_step = jax.jit(self._variational_step, static_argnames=("static",), donate_argnums=self.donate)
        self.traces = collections.Counter()  # how often each program was traced (tests: no recompiles)
        self.build()

    def build(self) -> None:
        """A method's own compiled programs (its training step)."""

    def model(self, params):
        if self.injected is not None:
            return self.injected.fn
        return functools.partial(ltm_model, params, self.model_cfg, dtype=self.dtype)

    # ----- hooks ------------------------------------------------------------------------------
    def proposal(self, params, data, key, fast_noise, fit, static):
        """The method's Gaussian q: (loc, log_scale, eps or None) [B, *event]; eps fixes the
        reported estimate's noise where the method has one (local with report_fixed_noise)."""
        raise NotImplementedError(f"{type(self).__name__} defines no proposal")

    def chains(self, params, data, key, fast_noise, warmup, draws, chains, keep_z):
        raise NotImplementedError(f"{type(self).__name__} runs no chains")

    # ----- derived from the hooks -------------------------------------------------------------
    def _bound(self, params, data, key, fast_noise, noise, fit, num_samples, static):
        self.traces["bound"] += 1  # Python runs only while jit traces
        fit_key, eval_key = jax.random.split(key)
        loc, log_scale, fixed = self.proposal(params, data, fit_key, fast_noise, fit, static)
        eps = noise if noise is not None else fixed
        loglik, kl = self.elbo(params, data, loc, log_scale, num_samples, eps, eval_key)
        return loglik.mean(0), kl

    def _log_weights(self, params, data, key, fit, num_samples, static):
        self.traces["log_weights"] += 1
        fit_key, draw_key = jax.random.split(key)
        loc, log_scale, _ = self.proposal(params, data, fit_key, None, fit, static)
        return self.gaussian_log_weights(params, data, loc, log_scale, num_samples, draw_key)

    def _posterior(self, params, data, key, fit, num_draws, static):
        fit_key, draw_key = jax.random.split(key)
        loc, log_scale, _ = self.proposal(params, data, fit_key, None, fit, static)
        return self.gaussian_posterior(params, data, loc, log_scale, num_draws, draw_key)

    def _posterior_latents(self, params, data, key, fit, static):
        fit_key, draw_key = jax.random.split(key)
        loc, log_scale, _ = self.proposal(params, data, fit_key, None, fit, static)
        return loc + jnp.exp(log_scale) * jax.random.normal(draw_key, loc.shape, jnp.float32)

    def _variational_step(self, params, opt_state, data, key, lr, fit, static):
        """A training iteration for a method whose q needs no gradient of its own: q from the
        proposal (parameters constant), then one slow step on the ELBO at q with fresh noise."""
        fit_key, slow_key = jax.random.split(key)
        loc, log_scale, _ = self.proposal(jax.lax.stop_gradient(params), data, fit_key, None, fit, static)
        loc, log_scale = jax.lax.stop_gradient(loc), jax.lax.stop_gradient(log_scale)
        n_tokens = data.shape[0] * (data.shape[1] - 1)

        def loss_fn(p):
            loglik, kl = self.elbo(p, data, loc, log_scale, self.inf.num_samples, None, slow_key)
            nll = -loglik.mean(0).sum() / n_tokens
            loss = nll + kl.sum() / n_tokens
            return loss, {"loss": loss, "nll": nll, "kl": kl.mean()}

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params, opt_state, guard = self.update(params, opt_state, grads, lr, loss)
        return params, opt_state, out | guard

    def encoder_fn(self, params):
        """tokens [B, L] -> (loc, log_scale) [B, n_z, d_model]: the encoder as the guide's parameter."""
        return lambda tokens: jax_encoder.encode(params, self.model_cfg, tokens, self.dtype)

    def elbo(self, params, tokens, loc, log_scale, num_samples, noise, key):
        """(loglik [S, B], kl [B]) of q = N(loc, exp(log_scale)^2); noise [S, B, ...] fixes z = loc + exp(log_scale) * noise."""
        guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
        value = None if noise is None else loc + jnp.exp(log_scale) * noise
        particles = num_samples if noise is None else noise.shape[0]
        return elbo_terms(self.model(params), guide, tokens, num_particles=particles, latent_value=value, rng_key=key,
                          **self.sites)

    def encoder_elbo(self, params, tokens, num_samples, key):
        """(loglik [S, B], kl [B]) of the encoder's q through the amortized guide, fresh noise."""
        guide = functools.partial(amortized_guide, encoder_fn=self.encoder_fn(params))
        return elbo_terms(self.model(params), guide, tokens, num_particles=num_samples, rng_key=key)

    def log_joint(self, params, tokens, z):
        """log p(x, z) [*lead, B], unscaled, for z [*lead, B, n_z, d]."""
        return log_joint(self.model(params), (tokens,), z, **self.sites)

    def gaussian_posterior(self, params, tokens, loc, log_scale, num_draws: int, key) -> dict:
        """num_draws draws from q as one chain: z [1, D, B, ...], log p(x, z) and log q(z) [1, D, B],
        and q's own loc and log_scale [B, ...] (diagnostics measure q from them).
        The log joints are computed one draw at a time (lax.map), so memory does not grow with D."""
        eps = jax.random.normal(key, (num_draws, *loc.shape), jnp.float32)
        z = loc + jnp.exp(log_scale) * eps
        event = tuple(range(2, z.ndim))
        log_q = (-0.5 * eps**2 - log_scale - 0.5 * jnp.log(2 * jnp.pi)).sum(event)
        log_p = jax.lax.map(lambda zz: self.log_joint(params, tokens, zz), z)
        return {"z": z[None], "log_joint": log_p[None], "log_q": log_q[None], "loc": loc, "log_scale": log_scale}

    def gaussian_log_weights(self, params, tokens, loc, log_scale, num_samples: int, key):
        """Importance log weights log p(x, z_k) - log q(z_k) [K, B] of K draws z_k ~ q (IWAE, PSIS)."""
        draws = self.gaussian_posterior(params, tokens, loc, log_scale, num_samples, key)
        return draws["log_joint"][0] - draws["log_q"][0]

    def update(self, params, opt_state, grads, lr, loss):
        """One clipped AdamW step, kept only if the loss and every gradient are finite (decided on
        the device: no host sync); returns (params, state, {"grad_norm", "finite"}). The norm of the
        unclipped gradients is finite exactly when every gradient entry is."""
        new_params, new_state, grad_norm = apply_update(self.train, self.optimizer, params, opt_state, grads, lr)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return guarded(ok, new_params, params), guarded(ok, new_state, opt_state), {"grad_norm": grad_norm, "finite": ok}


def _frozen_copy(section) -> str:
    return json.dumps(dataclasses.asdict(section), sort_keys=True)


_PROGRAMS: dict[tuple, Programs] = {}


def programs_for(cls, cfg, dtype, platform: str, injected: LatentModel | None = None):
    """The cached `cls` programs of cfg's setting (and injected model)."""
    t = cfg.train
    key = (cls.__module__, cls.__qualname__, _frozen_copy(cfg.model), _frozen_copy(cfg.inference), t.beta1, t.beta2,
           t.weight_decay, t.grad_clip, t.slow_gradient, jnp.dtype(dtype).name, platform, injected)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = cls(copy.deepcopy(cfg.model), copy.deepcopy(cfg.inference), copy.deepcopy(t), dtype, platform,
                             injected)
    return _PROGRAMS[key]


class NumPyroBackend:
    backend = "numpyro"
    method: str = ""
    posterior_kind: str | None = "variational"
    programs_class = Programs
    compile_note = "compiling the training step (NumPyro: jax.jit; the first iteration waits for it, seconds to minutes)..."

    def __init__(self, cfg: RunConfig, model: LatentModel | None = None):
        self.cfg = cfg
        self.injected = model
        self.device = resolve_device(cfg.train.device)
        # Several devices (distributed.py): weights replicated, batches split over the Mesh's axis.
        self.where, self.batch_where = placements(self.device)
        # bf16 matmuls/attention on GPU (torch's autocast); parameters, optimiser, log-probs float32.
        self.dtype = jnp.bfloat16 if self.device.platform == "gpu" and model is None else jnp.float32
        init_key, train_key = jax.random.split(jax.random.PRNGKey(cfg.train.seed))
        self.key = jax.device_put(train_key, self.where)
        params = jax_decoder.init_params(cfg.model, init_key) if model is None else {}
        if model is None and needs_encoder(cfg):  # its own stream, so the decoder's init does not depend on the method
            params.update(jax_encoder.init_encoder_params(cfg.model, jax.random.fold_in(init_key, 1)))
        self.params = jax.device_put(params, self.where)
        self.optimizer = slow_optimizer(cfg.train)
        self.opt_state = jax.device_put(self.optimizer.init(self.params), self.where)
        self.iteration = 0
        self.eval_rows = 0  # evaluation batches are padded to the most rows seen (one compiled shape)

    # ----- randomness and inputs --------------------------------------------------------------
    def next_key(self):
        self.key, sub = jax.random.split(self.key)
        return sub

    @contextlib.contextmanager
    def rng_scope(self, seed: int):
        """Draws inside use PRNGKey(seed) and leave the training key untouched."""
        saved = self.key
        self.key = jax.device_put(jax.random.PRNGKey(seed), self.where)
        try:
            yield
        finally:
            self.key = saved

    def tensor(self, batch):
        """A batch on the device: token windows as int32 (an injected model's data as its dtype)."""
        dtype = np.int32 if self.injected is None else np.dtype(self.injected.dtype)
        batch = np.asarray(batch, dtype=dtype)
        split = self.batch_where is not None and batch.ndim and batch.shape[0] % self.batch_where.mesh.size == 0
        return jax.device_put(batch, self.batch_where if split else self.where)

    def padded(self, batch) -> tuple[jax.Array, int]:
        """(device batch, real rows): the rows padded, by repeating the last, to the most rows an
        evaluation call has seen, so a corpus's last partial batch reuses the compiled program.
        Sequences are independent in every bound (per-sequence q, chains and step sizes) and
        draws whose leading axis is the batch do not depend on its length
        (threefry_partitionable), so with one sample and one chain the real rows' numbers are
        those of the unpadded batch (more samples or chains: other draws of the same estimator);
        the padding rows are dropped. A later, smaller call is padded too (more work, same result).
        An injected model's data is not padded (its plate may tie rows together)."""
        batch = np.asarray(batch)
        n = len(batch)
        if self.injected is not None:
            return self.tensor(batch), n
        self.eval_rows = max(self.eval_rows, n)
        if self.eval_rows > n:
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.eval_rows - n, axis=0)])
        return self.tensor(batch), n

    def array(self, values):
        """Injected noise on the device: None, an array, or a tuple of arrays (a method's format)."""
        if values is None:
            return None
        if isinstance(values, (tuple, list)):
            return tuple(self.array(v) for v in values)
        return jax.device_put(np.asarray(values, dtype=np.float32), self.where)

    def finish_step(self, metrics: dict, lr: float) -> dict:
        """Count the iteration and add lr. The metrics stay 0-d device arrays (no host sync here):
        the trainer converts them at its logging interval. `finite` says whether the compiled step
        applied its update (it keeps the old weights and optimiser state otherwise); the trainer
        then stops, naming the iteration, so the count past it is never saved."""
        self.iteration += 1
        return metrics | {"lr": lr}

    def slow_lr(self) -> float:
        return slow_lr(self.iteration, self.cfg.train)

    @property
    def programs(self):
        return programs_for(self.programs_class, self.cfg, self.dtype, self.device.platform, self.injected)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.programs.shape

    # ----- the interface, derived from the method's hooks ---------------------------------------
    def fit_args(self, steps: int):
        """(fit, static) of the proposal for `steps` inner steps. Hook; default: nothing."""
        return None, None

    def _fit(self, steps: int):
        if self.posterior_kind is None:
            raise LtmError(NO_LATENT)
        return self.fit_args(steps)

    def proposal(self, batch, steps: int, fast_noise=None):
        """The method's q (loc, log_scale, eps or None) for a batch, as device arrays."""
        fit, static = self._fit(steps)
        return self.programs.proposal_program(self.params, self.tensor(batch), self.next_key(), self.array(fast_noise),
                                              fit, static=static)

    def bound(self, batch: np.ndarray, steps: int = 0, num_samples: int = 1, noise=None, fast_noise=None) -> dict:
        """Per-sequence ELBO terms at the method's q after `steps` inner steps, fresh noise unless
        injected: noise [S, B, *event] is the eps of the reported estimate, fast_noise that of the
        inner steps (the method's own format): injecting both makes two backends agree number for
        number."""
        fit, static = self._fit(steps)
        if noise is None and fast_noise is None:
            data, n = self.padded(batch)
        else:  # injected noise has the batch's own rows
            data, n = self.tensor(batch), len(batch)
        loglik, kl = self.programs.bound(self.params, data, self.next_key(), self.array(fast_noise), self.array(noise),
                                         fit, num_samples=num_samples, static=static)
        return {"loglik": host(loglik)[:n], "kl": host(kl)[:n], "num_tokens": int(data.shape[1] - 1)}

    def log_weights(self, batch: np.ndarray, steps: int, num_samples: int) -> np.ndarray:
        """Importance log weights log p(x, z_k) - log q(z_k) [K, B] of the method's q (IWAE, PSIS)."""
        fit, static = self._fit(steps)
        data, n = self.padded(batch)
        return np.asarray(self.programs.log_weights(self.params, data, self.next_key(), fit, num_samples=num_samples,
                                                    static=static))[:, :n]

    def posterior(self, batch: np.ndarray, steps: int, num_draws: int, num_chains: int = 1) -> dict:
        """Variational: num_draws draws of q as one chain (num_chains ignored), with log_q and q's
        loc / log_scale. Chains: `steps` warm-up steps, then num_draws kept draws per chain."""
        if self.posterior_kind == "chains":
            out = self.programs.run_chains(self.params, self.tensor(batch), self.next_key(), None,
                                           warmup=steps, draws=num_draws, chains=num_chains, keep_z=True)
            return {k: np.array(v) for k, v in out.items() if k not in CHAIN_INTERNALS}
        fit, static = self._fit(steps)
        out = self.programs.posterior(self.params, self.tensor(batch), self.next_key(), fit, num_draws=num_draws,
                                      static=static)
        return {name: np.array(value) for name, value in out.items()}

    def posterior_latents(self, batch: np.ndarray, steps: int):
        """One latent per sequence: a draw of q, or the last state of one chain after `steps` steps
        (the first steps // 2 adapting); None without a latent."""
        if self.posterior_kind is None:
            return None
        if self.posterior_kind == "chains":
            W = steps // 2
            out = self.programs.run_chains(self.params, self.tensor(batch), self.next_key(), None,
                                           warmup=W, draws=steps - W, chains=1, keep_z=False)
            return out["last"][0]
        fit, static = self._fit(steps)
        return self.programs.posterior_latents(self.params, self.tensor(batch), self.next_key(), fit, static=static)

    def variational_step(self, batch: np.ndarray) -> dict:
        """Programs.variational_step on a batch: q from the proposal, one slow step at it."""
        lr = self.slow_lr()
        fit, static = self.fit_args(self.cfg.inference.steps)
        self.params, self.opt_state, out = self.programs.variational_step(
            self.params, self.opt_state, self.tensor(batch), self.next_key(), np.float32(lr), fit, static=static
        )
        return self.finish_step(out, lr)

    def synchronize(self) -> None:
        """Wait for queued device work (benchmarks time the work, not its launch)."""
        jax.block_until_ready(self.params)

    # ----- state in canonical names -----------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter of this method: the decoder's, and the encoder's where it has one."""
        if self.injected is not None:
            return {}
        shapes = dict(jax_decoder.param_shapes(self.cfg.model))
        if needs_encoder(self.cfg):
            shapes.update(jax_encoder.param_shapes(self.cfg.model))
        return shapes

    def weights(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(self.params[name], dtype=np.float32) for name in self.param_shapes()}

    def load_weights(self, arrays: dict[str, np.ndarray]) -> None:
        expected = self.param_shapes()
        arrays = checked_weights(arrays, expected, needs_encoder(self.cfg))
        self.params = jax.device_put({k: np.asarray(arrays[k], dtype=np.float32) for k in expected}, self.where)

    def optimizer_state(self) -> tuple[dict[str, np.ndarray], dict]:
        tensors = flatten_state(self.opt_state, "opt")
        tensors["rng/jax"] = np.asarray(self.key)  # a raw uint32[2] threefry key
        return tensors, {"iteration": self.iteration}

    def load_optimizer_state(self, tensors: dict[str, np.ndarray], scalars: dict) -> None:
        self.opt_state = unflatten_state(self.optimizer.init(self.params), tensors, "opt", self.where)
        if "rng/jax" not in tensors:
            raise LtmError("optimizer.safetensors lacks tensor rng/jax")
        key = np.asarray(tensors["rng/jax"]).astype(np.uint32)
        self.key = jax.device_put(key, self.where)
        self.iteration = int(scalars["iteration"])

    # ----- generation -------------------------------------------------------------------------
    def prior_latents(self, num: int):
        if self.posterior_kind is None:
            return None
        return jax.random.normal(self.next_key(), (num, *self.latent_shape), jnp.float32)

    def generate(self, context: np.ndarray, z, max_new: int, temperature: float, top_k: int, **options) -> np.ndarray:
        """options: stop_id, utf8, progress of models.jax.generate.generate."""
        return jax_generate.generate(
            self.params, self.cfg.model, self.tensor(context), z, max_new, temperature, top_k, self.next_key(), self.dtype,
            **options,
        )
