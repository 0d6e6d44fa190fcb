"""The generic Pyro base of every inference method (protocol.Inference): the torch decoder (and the
amortized encoder where the method has one), device and precision, the slow AdamW optimiser,
weights and optimiser state as numpy arrays in canonical names, RNG state, generation, and
`bound`, `log_weights`, `posterior`, `posterior_latents` derived from a method's hooks:

    proposal(data, steps, fast_noise=None) -> (loc, log_scale[, eps])   the method's Gaussian q
    chains(data, warmup, draws, num_chains, fast_noise=None) -> dict     chain methods only:
        z [C, D, B, *event] kept draws, log_joint and accept_prob [C, D, B], step_size [C, B],
        last [C, B, *event] the final state
    step(batch) -> metrics                                                one training iteration

A method file subclasses it and defines those hooks; numpyro_backend.py is the mirror. With
`model=LatentModel(...)` the base runs a method on that model instead of the LTM (no decoder).
"""
from __future__ import annotations

import contextlib
import functools
import inspect

import numpy as np
import pyro
import torch

from ..config import RunConfig
from ..distributed import world
from ..errors import LtmError
from ..models.torch.decoder import Decoder
from ..models.torch.encoder import Encoder
from ..models.torch.generate import generate
from ..models.torch.program import local_guide, ltm_model
from ..noise import EVAL, Rows, torch_eps
from .latent_model import LatentModel
from .pyro_elbo import elbo_terms, log_joint, log_weights
from .registry import needs_encoder
from .schedules import slow_lr
from .weights import NO_LATENT, checked_weights


# Keys of a chains hook's result that `posterior` does not report (the rest are sample stats).
CHAIN_INTERNALS = ("last", "last_log_joint", "warmup_accept_prob")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LtmError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def data_parallel(decoder: torch.nn.Module):
    """The decoder (or encoder) in DistributedDataParallel when torchrun started several workers, else None.
    No buffer broadcast (the RoPE tables are the same everywhere): the forward passes of the fast
    steps and evaluation stay free of collectives."""
    w = world()
    if w.runtime != "torch":
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [w.local_rank] if next(decoder.parameters()).is_cuda else None
    no_sync_buffers = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                       else {"broadcast_buffers": False})
    wrapped = DistributedDataParallel(decoder, device_ids=ids, **no_sync_buffers)
    wrapped.cfg = getattr(decoder, "cfg", None)  # the model reads the shapes from it
    if hasattr(decoder, "tok_emb"):  # and the likelihood the output layer (unregistered: same Parameter)
        object.__setattr__(wrapped, "tok_emb", decoder.tok_emb)
    return wrapped


@contextlib.contextmanager
def frozen(module: torch.nn.Module | None):
    """requires_grad off for every parameter inside the block, restored afterwards (None: no-op)."""
    params = list(module.parameters()) if module is not None else []
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class PyroBackend:
    backend = "pyro"
    method: str = ""
    posterior_kind: str | None = "variational"

    def __init__(self, cfg: RunConfig, model: LatentModel | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        self.injected = model
        self.decoder = self.encoder = None
        self.autocast = False
        if model is None:
            torch.manual_seed(cfg.train.seed)
            self.decoder = Decoder(cfg.model).to(self.device)
            if needs_encoder(cfg):
                self.encoder = Encoder(cfg.model).to(self.device)
            # bf16 autocast for the decoder on CUDA; weights, optimiser and log-probs stay float32.
            self.autocast = self.device.type == "cuda"
            self.net = torch.compile(self.decoder) if cfg.train.compile else self.decoder
        self.ddp = data_parallel(self.decoder) if model is None else None
        self.encoder_ddp = data_parallel(self.encoder) if self.encoder is not None else None
        self.optimizer = self._make_optimizer()
        self.iteration = 0

    @property
    def compile_note(self) -> str | None:
        if self.cfg.train.compile:
            return "compiling the decoder (--compile: torch.compile; the first iterations wait for it, up to minutes)..."
        return None

    # ----- parameters under their canonical names ----------------------------------------------
    def named_parameters(self):
        """Decoder parameters by their own names, encoder parameters prefixed `encoder.`."""
        if self.decoder is not None:
            yield from self.decoder.named_parameters()
        if self.encoder is not None:
            for name, p in self.encoder.named_parameters():
                yield f"encoder.{name}", p

    def parameters(self) -> list:
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> dict:
        state = dict(self.decoder.state_dict()) if self.decoder is not None else {}
        if self.encoder is not None:
            state.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})
        return state

    # ----- the slow (global) step -------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.AdamW | None:
        if not self.parameters():
            return None  # an injected model has no weights to train
        t = self.cfg.train
        matrices = [p for p in self.parameters() if p.dim() >= 2]
        vectors = [p for p in self.parameters() if p.dim() < 2]
        groups = [{"params": matrices, "weight_decay": t.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
        # fused: one kernel for all parameters (CPU too: 0.8 ms vs 2.7 ms foreach at the default
        # shape), and it takes found_inf, which skips the update on the device (slow_update).
        return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=True)

    def slow_update(self, loss: torch.Tensor, metrics: dict | None = None, keep_grads: bool = False) -> dict:
        """One AdamW step on the decoder (and encoder), applied only if the loss, the gradients and
        every tensor in `metrics` are finite, decided on the device (no host sync): the fused
        AdamW's found_inf skips the whole update, moments and step counts included, as under a
        GradScaler. Returns the learning rate, gradient norm and `finite` (0-d tensors).
        keep_grads: loss's gradients add to those already in .grad (the trajectory update's)."""
        lr = slow_lr(self.iteration, self.cfg.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if not keep_grads:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.train.grad_clip or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), clip)  # inf / nan if any gradient is
        checked = [loss.detach(), grad_norm] + [v for v in (metrics or {}).values() if isinstance(v, torch.Tensor)]
        finite = torch.isfinite(torch.stack([v.float() for v in checked])).all()
        self.optimizer.found_inf = (~finite).float()
        self.optimizer.step()
        self.iteration += 1  # the lr schedule moves on; a non-finite iteration stops the run anyway
        return {"lr": lr, "grad_norm": grad_norm.detach(), "finite": finite}

    # ----- the probabilistic program ------------------------------------------------------------
    def model(self, tokens):
        if self.injected is not None:
            return self.injected.fn(tokens)
        # Across workers the slow step's forward goes through DDP (its backward all-reduces); the
        # fast steps (decoder frozen) and evaluation (no grad) use the plain module: no collective.
        slow = self.ddp is not None and torch.is_grad_enabled() and self.decoder.tok_emb.weight.requires_grad
        return ltm_model(self.ddp if slow else self.net, tokens, autocast=self.autocast)

    @property
    def trained_encoder(self):
        """The encoder for the slow step's gradient: through DDP across workers (its backward
        all-reduces the encoder's gradients), else the plain module. Forwards without gradients
        (local's fast-step start, evaluation) call self.encoder: no collective."""
        return self.encoder_ddp if self.encoder_ddp is not None else self.encoder

    # Which global rows the batch in hand holds (noise.Rows): set by sharded evaluation; training
    # derives it from the iteration and the worker's share. None: the torch stream (generation).
    noise_rows = None

    def training_rows(self, count: int):
        w = world()
        return Rows(self.cfg.train.seed, self.iteration, w.rank * count if w.runtime == "torch" else 0,
                          count * (w.size if w.runtime == "torch" else 1))

    @property
    def sites(self) -> dict:
        """The latent and observed site names, as the ELBO helpers take them."""
        m = self.injected
        return {"latent": "z", "obs": "x"} if m is None else {"latent": m.latent, "obs": m.obs}

    @property
    def latent_shape(self) -> tuple[int, ...]:
        if self.injected is not None:
            return tuple(self.injected.event_shape)
        return (self.cfg.model.n_z, self.cfg.model.d_model)

    @property
    def n_tokens(self) -> int:
        return self.cfg.model.block_size

    def gaussian_elbo(self, tokens, loc, log_scale, num_samples: int, noise=None):
        """(loglik [S, B], kl [B]) of q = N(loc, exp(log_scale)^2); noise fixes the eps."""
        guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
        value = None if noise is None else loc + log_scale.exp() * noise
        with pyro.validation_enabled(False):
            return elbo_terms(self.model, guide, tokens, num_particles=num_samples, latent_value=value, **self.sites)

    def gaussian_bound(self, tokens, loc, log_scale, num_samples: int, noise=None) -> dict:
        """The per-sequence terms of `bound` for a diagonal Gaussian q."""
        if noise is not None:
            noise = torch.as_tensor(noise, dtype=torch.float32, device=self.device)
            num_samples = noise.shape[0]
        with torch.no_grad():
            loglik, kl = self.gaussian_elbo(tokens, loc, log_scale, num_samples, noise)
        return {"loglik": loglik.mean(0).cpu().numpy(), "kl": kl.cpu().numpy(), "num_tokens": tokens.shape[1] - 1}

    def gaussian_log_weights(self, tokens, loc, log_scale, num_samples: int, chunk: int = 8) -> np.ndarray:
        """log p(x, z_k) - log q(z_k) for z_k ~ q = N(loc, exp(log_scale)^2): [K, B], K in chunks."""
        guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
        out = []
        with torch.no_grad(), pyro.validation_enabled(False):
            for start in range(0, num_samples, chunk):
                k = min(chunk, num_samples - start)
                out.append(log_weights(self.model, guide, tokens, num_particles=k, **self.sites))
        return torch.cat(out).cpu().numpy()

    def log_joint(self, tokens, z):
        with pyro.validation_enabled(False):
            return log_joint(self.model, tokens, latent_value=z, **self.sites)

    def gaussian_posterior(self, tokens, loc, log_scale, num_draws: int) -> dict:
        """Draws from q as one chain, with log p(x, z) and log q(z) of each draw, and q's loc and
        log_scale [B, *event]."""
        q = torch.distributions.Independent(torch.distributions.Normal(loc, log_scale.exp()), loc.dim() - 1)
        with torch.no_grad():
            z = q.sample((num_draws,))  # [D, B, n_z, d]
            log_q = q.log_prob(z)
            log_p = torch.stack([self.log_joint(tokens, z[d : d + 1])[0] for d in range(num_draws)])
        return {"z": z[None].cpu().numpy(), "log_joint": log_p[None].cpu().numpy(), "log_q": log_q[None].cpu().numpy(),
                "loc": loc.detach().cpu().numpy(), "log_scale": log_scale.detach().cpu().numpy()}

    # ----- the interface, derived from the method's hooks ---------------------------------------
    def proposal(self, data, steps: int, fast_noise=None):
        """The method's Gaussian q: (loc, log_scale) [B, *event], or (loc, log_scale, eps) where
        the method fixes the reported estimate's noise. Hook: every latent method defines it."""
        raise NotImplementedError(f"{type(self).__name__} defines no proposal")

    def chains(self, data, warmup: int, draws: int, num_chains: int, fast_noise=None) -> dict:
        """Chain methods' hook (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} runs no chains")

    def _q(self, data, steps: int, fast_noise=None):
        if self.posterior_kind is None:
            raise LtmError(NO_LATENT)
        if fast_noise is not None and not isinstance(fast_noise, (tuple, list)):
            fast_noise = torch.as_tensor(np.asarray(fast_noise), dtype=torch.float32, device=self.device)
        q = tuple(self.proposal(data, steps, fast_noise=fast_noise))
        return q[0], q[1], (q[2] if len(q) > 2 else None)

    def bound(self, batch: np.ndarray, steps: int = 0, num_samples: int = 1, noise=None, fast_noise=None,
              at_fast_noise: bool = False) -> dict:
        """Per-sequence ELBO terms at the method's q after `steps` inner steps, fresh noise unless
        injected: noise [S, B, *event] is the eps of the reported estimate, fast_noise that of the
        inner steps (the method's own format): injecting both makes two backends agree number for
        number. at_fast_noise: the estimate reuses the one eps the fast steps used (local with
        inference.fixed_noise; eval --fixed-noise's labelled row: the reference's number, not a bound)."""
        tokens = self.tensor(batch)
        loc, log_scale, fixed = self._q(tokens, steps, fast_noise)
        if noise is None and at_fast_noise:
            noise = fixed
        if noise is None and self.noise_rows is not None:  # sharded evaluation: each window's own eps
            noise = torch_eps(self.noise_rows, EVAL, tokens.shape[0], tuple(loc.shape[1:]), num_samples, self.device)
        return self.gaussian_bound(tokens, loc, log_scale, num_samples, noise)

    def log_weights(self, batch: np.ndarray, steps: int, num_samples: int) -> np.ndarray:
        """Importance log weights log p(x, z_k) - log q(z_k) [K, B] of the method's q (IWAE, PSIS)."""
        tokens = self.tensor(batch)
        loc, log_scale, _ = self._q(tokens, steps)
        return self.gaussian_log_weights(tokens, loc, log_scale, num_samples)

    def posterior(self, batch: np.ndarray, steps: int, num_draws: int, num_chains: int = 1) -> dict:
        """Variational: num_draws draws of q as one chain (num_chains ignored), with log_q and q's
        loc / log_scale. Chains: `steps` warm-up steps, then num_draws kept draws per chain."""
        tokens = self.tensor(batch)
        if self.posterior_kind == "chains":
            run = self.chains(tokens, steps, num_draws, num_chains)
            return {k: v.cpu().numpy() for k, v in run.items() if k not in CHAIN_INTERNALS}
        loc, log_scale, _ = self._q(tokens, steps)
        return self.gaussian_posterior(tokens, loc, log_scale, num_draws)

    def posterior_latents(self, batch: np.ndarray, steps: int):
        """One latent per sequence: a draw of q, or the last state of one chain after `steps` steps
        (the first steps // 2 adapting); None without a latent."""
        if self.posterior_kind is None:
            return None
        tokens = self.tensor(batch)
        if self.posterior_kind == "chains":
            return self.chains(tokens, steps // 2, steps - steps // 2, 1)["last"][0]
        loc, log_scale, _ = self._q(tokens, steps)
        return loc + log_scale.exp() * torch.randn_like(loc)

    def variational_step(self, batch: np.ndarray) -> dict:
        """A training iteration for a method whose q needs no gradient of its own: q from
        `proposal` (decoder frozen), then one slow step on the ELBO at q with fresh noise."""
        tokens = self.tensor(batch)
        with frozen(self.decoder):
            loc, log_scale, _ = self._q(tokens, self.cfg.inference.steps)
        loglik, kl = self.gaussian_elbo(tokens, loc.detach(), log_scale.detach(), self.cfg.inference.num_samples)
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
        nll = -loglik.mean(0).sum() / n_tokens
        loss = nll + kl.sum() / n_tokens
        metrics = {"loss": loss.detach(), "nll": nll.detach(), "kl": kl.mean().detach()}
        metrics.update(self.slow_update(loss, metrics))  # skipped on the device unless finite
        return metrics

    def synchronize(self) -> None:
        """Wait for queued device work (benchmarks time the work, not its launch)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def tensor(self, batch) -> torch.Tensor:
        """A batch on the device: token windows as int64 (an injected model's data as its dtype)."""
        if isinstance(batch, torch.Tensor):
            return batch
        dtype = np.int64 if self.injected is None else np.dtype(self.injected.dtype)
        return torch.as_tensor(np.asarray(batch, dtype=dtype), device=self.device)

    # ----- state in canonical names -----------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().float().numpy() for k, v in self.state_dict().items()}

    def load_weights(self, arrays: dict[str, np.ndarray]) -> None:
        expected = {name: tuple(t.shape) for name, t in self.state_dict().items()}
        arrays = checked_weights(arrays, expected, self.encoder is not None)
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        self.decoder.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("encoder.")})
        if self.encoder is not None:
            self.encoder.load_state_dict({k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")})

    def optimizer_state(self) -> tuple[dict[str, np.ndarray], dict]:
        tensors = {"rng/torch": torch.get_rng_state().numpy()}
        if self.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device).numpy()
        for name, p in self.named_parameters():
            state = self.optimizer.state.get(p)
            if state:
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    tensors[f"{key}/{name}"] = state[key].detach().cpu().float().numpy().reshape(state[key].shape)
        return tensors, {"iteration": self.iteration}

    def load_optimizer_state(self, tensors: dict[str, np.ndarray], scalars: dict) -> None:
        for name, p in self.named_parameters():
            if f"exp_avg/{name}" in tensors:
                self.optimizer.state[p] = {  # the fused AdamW keeps `step` on the parameter's device
                    "step": torch.tensor(float(np.asarray(tensors[f"step/{name}"]).reshape(-1)[0]), device=p.device),
                    "exp_avg": torch.from_numpy(np.array(tensors[f"exp_avg/{name}"])).to(self.device),
                    "exp_avg_sq": torch.from_numpy(np.array(tensors[f"exp_avg_sq/{name}"])).to(self.device),
                }
        torch.set_rng_state(torch.from_numpy(np.array(tensors["rng/torch"])))
        if "rng/cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(torch.from_numpy(np.array(tensors["rng/cuda"])), self.device)
        self.iteration = int(scalars["iteration"])

    @contextlib.contextmanager
    def rng_scope(self, seed: int):
        """Draws inside use their own seeded stream and leave the training stream untouched."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield

    # ----- generation -------------------------------------------------------------------------
    def prior_latents(self, num: int):
        if self.posterior_kind is None:
            return None
        return torch.randn(num, *self.latent_shape, device=self.device)

    def generate(self, context: np.ndarray, z, max_new: int, temperature: float, top_k: int, **options) -> np.ndarray:
        """options: stop_id, utf8, progress of models.torch.generate.generate."""
        self.decoder.eval()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            out = generate(self.decoder, self.tensor(context), z, max_new, temperature, top_k, **options)
        return out.cpu().numpy()
