"""A Pyro distribution over a whole token sequence whose log_prob is one fused cross-entropy.

`Categorical(logits=...)` normalises the logits and keeps a second [tokens x vocab] tensor; this
keeps only what cross_entropy itself needs (DESIGN.md section 7). Log-probabilities in float32
even when the decoder ran in bfloat16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints


class TokenSequence(TorchDistribution):
    """x_1..x_T given logits [..., T, vocab]; event shape [T], batch shape logits.shape[:-2]."""

    arg_constraints = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, logits: torch.Tensor, validate_args=None):
        self.logits = logits
        super().__init__(logits.shape[:-2], logits.shape[-2:-1], validate_args=False)

    def token_log_probs(self, value: torch.Tensor) -> torch.Tensor:
        """log p(x_t | x_<t, z) for every position: shape batch_shape + [T], float32."""
        shape = self.batch_shape + self.event_shape
        vocab = self.logits.shape[-1]
        # The log-softmax in float32 on every device: bf16 logits (CUDA autocast, or a bf16 decoder
        # on the CPU, where autocast would not upcast) would otherwise normalise in bf16. One float32
        # [tokens x vocab] copy; a fused kernel could avoid it, not done yet.
        nll = F.cross_entropy(self.logits.float().reshape(-1, vocab), value.expand(shape).reshape(-1), reduction="none")
        return -nll.float().view(shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.token_log_probs(value).sum(-1)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return TokenSequence(self.logits.expand(batch_shape + self.logits.shape[-2:]))

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError("TokenSequence is autoregressive: generate with ltm_ppl.generate")
