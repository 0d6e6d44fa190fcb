"""Matmul FLOPs per predicted token, from the config alone (2 FLOPs per multiply-add).

So runs can be compared token-matched (the paper's) or compute-matched: a method's descriptor counts
its whole training iteration per training token from these (inference.registry's
`training_flops_per_token`). A backward pass costs two
forwards when it computes weight and activation gradients, one when it computes activation
gradients only (the fast steps, the Langevin steps: the decoder is frozen there).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the method descriptors (below config) count with these
    from .config import ModelConfig


def keys_per_query(L: int, window: int, causal: bool) -> float:
    """Keys a query attends to, averaged over the window (the area of the mask / L): L/2 causal,
    W (1 - W / 2L) with a sliding window of W keys (L/2 again at W = L), L bidirectional."""
    if not causal:
        return float(L)
    return L / 2 if not window else window * (1 - window / (2 * L))


def _layer(m: ModelConfig, d: int, L: int, causal: bool, window: int = 0) -> float:
    attention = 2 * 2 * d * keys_per_query(L, window, causal)  # scores and weighted values
    return 2 * 4 * d * d + 2 * 3 * d * m.hidden + attention


def decoder_forward(m: ModelConfig) -> float:
    d, L = m.d_model, m.block_size
    per_layer = _layer(m, d, L, causal=True, window=m.attention_window)
    if m.latent:
        # query and output projections per token, the z keys/values once per window, attention to z
        per_layer += 2 * 2 * d * d + 2 * 2 * d * d * m.z_per_layer / L + 2 * 2 * m.z_per_layer * d
    return m.n_layer * per_layer + 2 * d * m.vocab_size


def encoder_forward(m: ModelConfig) -> float:
    d, L = m.d_model, m.block_size + 1
    layers = m.encoder_layers * _layer(m, d, L, causal=False)
    pool = 2 * 2 * d * d + (2 * 2 * d * d * m.n_z + 2 * 2 * m.n_z * L * d + 2 * 2 * d * d * m.n_z) / L
    return layers + pool + 2 * 2 * d * d * m.n_z / L

