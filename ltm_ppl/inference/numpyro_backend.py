"""The generic NumPyro base of every inference method (protocol.Inference), the mirror of
pyro_backend.py: the JAX decoder's parameters (a flat dict in the canonical torch names and
layouts; the amortized encoder's `encoder.*` parameters in the same dict where the method has
one), its device and precision (numpyro_device.py), the slow AdamW optimiser (optax) over every
parameter (numpyro_optim.py), weights and optimiser state as numpy arrays, the PRNG key,
generation, and the interface derived from the compiled `Programs` of its method
(numpyro_programs.py):

    NumPyroBackend.fit_args(steps) -> (fit, static): what the proposal needs for `steps` inner
        steps, as an array argument (local: the fast step sizes) and a hashable static one
    NumPyroBackend.step(batch) -> metrics

A method file subclasses it and numpyro_programs.Programs; with `model=LatentModel(...)` the base
runs a method on that model instead of the LTM (no decoder). Nothing here imports torch.
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from ..config import RunConfig
from ..errors import LtmError
from ..models.jax import decoder as jax_decoder, encoder as jax_encoder, generate as jax_generate
from .latent_model import LatentModel
from .numpyro_device import host, placements, resolve_device
from .numpyro_optim import flatten_state, slow_optimizer, unflatten_state
from .numpyro_programs import Programs, programs_for
from .registry import needs_encoder
from .schedules import slow_lr
from .weights import NO_LATENT, checked_weights


# Keys of a chains hook's result that `posterior` does not report (the rest are sample stats).
CHAIN_INTERNALS = ("last", "last_log_joint", "warmup_accept_prob")


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

    def bound(self, batch: np.ndarray, steps: int = 0, num_samples: int = 1, noise=None, fast_noise=None,
              at_fast_noise: bool = False) -> dict:
        """Per-sequence ELBO terms at the method's q after `steps` inner steps, fresh noise unless
        injected: noise [S, B, *event] is the eps of the reported estimate, fast_noise that of the
        inner steps (the method's own format): injecting both makes two backends agree number for
        number. at_fast_noise: the estimate reuses the one eps the fast steps used (local with
        inference.fixed_noise; eval --fixed-noise's labelled row: the reference's number, not a bound)."""
        fit, static = self._fit(steps)
        if noise is None and fast_noise is None:
            data, n = self.padded(batch)
        else:  # injected noise has the batch's own rows
            data, n = self.tensor(batch), len(batch)
        loglik, kl = self.programs.bound(self.params, data, self.next_key(), self.array(fast_noise), self.array(noise),
                                         fit, num_samples=num_samples, static=static, at_fast_noise=at_fast_noise)
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
