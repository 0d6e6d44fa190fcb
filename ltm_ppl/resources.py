"""Memory a request needs at the least, from its config and counts, checked before anything is
allocated or written: a huge --batch-size, --samples, --chains, --num or model size is one line
("needs at least 80 GiB, 22 GiB available") instead of the allocator's traceback or, worse, the
kernel's OOM killer after a minute of swapping (measured: `fit --batch-size 1000000000`, 58 s and
23.8 GB, exit 137).

The estimates are LOWER bounds (the weights, and one float32 residual-stream vector per token and
row, per layer when training), so a request that fails them cannot run; one that passes may still
need more. Only host memory (CPU runs) and CUDA memory (Pyro on a GPU) are checked.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import LtmError

if TYPE_CHECKING:
    from .config import ModelConfig, RunConfig

FLOAT = 4  # bytes per float32


def decoder_parameters(m: ModelConfig) -> int:
    """Weights of the decoder: attention and SwiGLU MLP per layer, cross-attention if latent, the
    tied embedding (norm gains are negligible)."""
    d = m.d_model
    per_layer = 4 * d * d + 3 * d * m.hidden + (4 * d * d if m.latent else 0)
    return m.n_layer * per_layer + max(m.vocab_size, 1) * d


def training_bytes(cfg: RunConfig, workers: int = 1) -> float:
    """One training iteration: weights, gradients and AdamW's two moments; the residual stream of
    every layer for the backward pass, per row (batch rows x samples of z) and token."""
    m = cfg.model
    rows = -(-cfg.train.batch_size // workers) * max(cfg.inference.num_samples, 1)
    return FLOAT * (4 * decoder_parameters(m) + rows * m.block_size * m.d_model * m.n_layer)


def inference_bytes(m: ModelConfig, rows: int, tokens: int | None = None) -> float:
    """A forward pass over `rows` sequences at once (no weight gradients kept): the weights, and
    one residual-stream vector per token and row."""
    return FLOAT * (decoder_parameters(m) + rows * (tokens or m.block_size) * m.d_model)


def available_bytes(device: str = "cpu") -> int | None:
    """What the request can have: CUDA's free memory for a torch CUDA device, else the host's
    MemAvailable (Linux); None when unknown (the check is then skipped)."""
    if device.startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                return int(torch.cuda.mem_get_info()[0])
        except Exception:  # noqa: BLE001 - no usable CUDA: nothing to check against
            return None
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**50 else f"{n / 2**40:,.0f} TiB"


def require_memory(what: str, needed: float, device: str = "cpu", hint: str = "") -> None:
    """Refuse `what` when its lower bound `needed` exceeds the memory available."""
    have = available_bytes(device)
    if have is not None and needed > have:
        raise LtmError(f"{what} needs at least {_gib(needed)} of memory, {_gib(have)} is available"
                       + (f": {hint}" if hint else ""))


def device_of(cfg: RunConfig) -> str:
    """Where cfg's arrays live, as far as this check can tell: "cpu", "cuda", or "" (a JAX
    accelerator: not checked)."""
    if cfg.train.device == "cpu":
        return "cpu"
    if cfg.train.backend == "pyro":
        import torch

        return "cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu"
    import jax

    return "cpu" if jax.default_backend() == "cpu" else ""


def check(what: str, needed: float, cfg: RunConfig, hint: str) -> None:
    device = device_of(cfg)
    if device:
        require_memory(what, needed, device, hint)
