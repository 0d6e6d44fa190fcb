"""The LTM as a Pyro program, with the per-sequence Gaussian guide of the local method beside it
(models/jax/program.py is the mirror).

    z_i ~ Normal(0, I)  [n_z, d_z]        site "z", inside plate "seq"
    x_i ~ TokenSequence(f(x_i, z_i))     site "x", observed

`tokens` are windows [B, block_size + 1]: the first token is conditioned on, the rest predicted.
Extra leading dimensions of z (vectorised particles, chains) are folded into the decoder batch.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from .likelihood import TokenSequence


def decode(decoder, tokens: torch.Tensor, z: torch.Tensor | None, autocast: bool = False) -> torch.Tensor:
    """Final hidden states [*lead, B, T, d_model] for windows tokens [B, T+1] given z [*lead, B,
    n_z, d_z]; the output layer (decoder.tok_emb.weight) is applied by the likelihood, chunked."""
    inputs = tokens[..., :-1]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        if z is None:
            return _matmul_dtype(decoder(inputs, hidden_only=True), autocast)
        lead = z.shape[:-2]
        flat_inputs = inputs.expand(lead + inputs.shape[-1:]).reshape(-1, inputs.shape[-1])
        hidden = decoder(flat_inputs, z.reshape(-1, *z.shape[-2:]), hidden_only=True)
    return _matmul_dtype(hidden, autocast).view(*lead, *hidden.shape[-2:])


def _matmul_dtype(hidden: torch.Tensor, autocast: bool) -> torch.Tensor:
    """Under autocast the output layer runs in bf16, as it did inside the autocast region (the
    likelihood applies it later, outside; its log-softmax stays float32)."""
    return hidden.to(torch.bfloat16) if autocast else hidden


def ltm_model(decoder, tokens: torch.Tensor, autocast: bool = False):
    cfg = decoder.cfg
    with pyro.plate("seq", tokens.shape[0]):
        z = None
        if cfg.latent:
            prior = dist.Normal(tokens.new_zeros((), dtype=torch.float32), 1.0)
            z = pyro.sample("z", prior.expand([cfg.n_z, cfg.d_model]).to_event(2))
        hidden = decode(decoder, tokens, z, autocast)
        pyro.sample("x", TokenSequence(hidden=hidden, weight=decoder.tok_emb.weight), obs=tokens[..., 1:])


def local_guide(tokens: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor):
    """q(z_i) = N(loc_i, diag exp(log_scale_i)^2): the fast local variational parameters."""
    with pyro.plate("seq", tokens.shape[0]):
        pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(loc.dim() - 1))


def amortized_guide(tokens: torch.Tensor, encoder):
    """q_phi(z_i | x_i) = N(mu_phi(x_i), diag sigma_phi(x_i)^2): encoder(tokens) -> (loc, log_scale)."""
    loc, log_scale = encoder(tokens)
    with pyro.plate("seq", tokens.shape[0]):
        pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(loc.dim() - 1))
