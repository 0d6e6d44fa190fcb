"""A Pyro distribution over a whole token sequence whose log_prob is one fused cross-entropy.

`Categorical(logits=...)` normalises the logits and keeps a second [tokens x vocab] tensor; this
keeps only what cross_entropy itself needs. Given the decoder's final hidden
states and its (tied) output weight instead of logits, the output layer and the cross-entropy run
chunked (chunked_ce_torch.py): no float32 [tokens x vocab] logits are ever held. Log-probabilities
in float32 even when the decoder ran in bfloat16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints

from .chunked_ce_torch import token_log_probs


class TokenSequence(TorchDistribution):
    """x_1..x_T given logits [..., T, vocab], or hidden [..., T, d] and weight [vocab, d]; event
    shape [T], batch shape logits.shape[:-2]."""

    arg_constraints = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, logits: torch.Tensor | None = None, validate_args=None, *, hidden=None, weight=None):
        if (logits is None) == (hidden is None) or (hidden is None) != (weight is None):
            raise ValueError("TokenSequence takes logits, or hidden and weight")
        self.logits, self.hidden, self.weight = logits, hidden, weight
        states = logits if logits is not None else hidden
        super().__init__(states.shape[:-2], states.shape[-2:-1], validate_args=False)

    def token_log_probs(self, value: torch.Tensor) -> torch.Tensor:
        """log p(x_t | x_<t, z) for every position: shape batch_shape + [T], float32."""
        shape = self.batch_shape + self.event_shape
        if self.hidden is not None:
            return token_log_probs(self.hidden, self.weight, value.expand(shape))
        vocab = self.logits.shape[-1]
        # The log-softmax in float32 on every device: bf16 logits (CUDA autocast, or a bf16 decoder
        # on the CPU, where autocast would not upcast) would otherwise normalise in bf16.
        nll = F.cross_entropy(self.logits.float().reshape(-1, vocab), value.expand(shape).reshape(-1), reduction="none")
        return -nll.float().view(shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.token_log_probs(value).sum(-1)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if self.hidden is not None:
            return TokenSequence(hidden=self.hidden.expand(batch_shape + self.hidden.shape[-2:]), weight=self.weight)
        return TokenSequence(self.logits.expand(batch_shape + self.logits.shape[-2:]))

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError("TokenSequence is autoregressive: generate with ltm_ppl.generate")
