"""The likelihood of a token sequence given the torch decoder's final hidden states: log p(x_t | ...)
of every token from the hidden states and the tied output weight, without ever holding float32
logits for all tokens (the output layer and the log-softmax run on chunks of tokens, and the
backward pass recomputes each chunk's logits: issue 11), and `TokenSequence`, the Pyro
distribution whose log_prob it is (models/jax/likelihood.py is the mirror).

On CUDA, liger-kernel's fused linear cross-entropy (the published code's kernel; the `[liger]`
extra) is used when importable; everywhere else, and when it is absent, the chunked torch
implementation below. At most CHUNK_ELEMENTS float32 logits exist at a time. Log-probabilities
are float32 whatever the matmul's dtype.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints

# Elements of one chunk's float32 logits: 2**23 is 32 MB on the CPU (the default shape fits in one
# chunk); on a GPU 2**27 (512 MB: 13 chunks at LTM-M's 32k tokens x 50k vocabulary), so that each
# chunk's matmul is large and the kernel launches few.
CHUNK_ELEMENTS = 2**23
CUDA_CHUNK_ELEMENTS = 2**27


def chunk_rows(vocab: int, device: torch.device) -> int:
    elements = CUDA_CHUNK_ELEMENTS if device.type == "cuda" else CHUNK_ELEMENTS
    return max(1, elements // max(1, vocab))


class ChunkedTokenLogProb(torch.autograd.Function):
    """log_softmax(hidden @ weight.T)[n, target_n] for hidden [N, d], weight [V, d], target [N]."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, target, rows: int):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        w = weight.to(hidden.dtype)
        for s in range(0, hidden.shape[0], rows):
            logits = F.linear(hidden[s : s + rows], w).float()
            lse[s : s + rows] = torch.logsumexp(logits, dim=-1)
            out[s : s + rows] = logits.gather(1, target[s : s + rows, None]).squeeze(1) - lse[s : s + rows]
        ctx.save_for_backward(hidden, weight, target, lse)
        ctx.rows = rows
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        hidden, weight, target, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        w = weight.to(hidden.dtype)
        d_hidden = torch.empty_like(hidden) if need_hidden else None
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad = grad.float()
        for s in range(0, hidden.shape[0], ctx.rows):
            h, g = hidden[s : s + ctx.rows], grad[s : s + ctx.rows, None]
            # d/dlogits of (logit_target - logsumexp) = onehot(target) - softmax, times the incoming grad.
            d_logits = torch.exp(F.linear(h, w).float() - lse[s : s + ctx.rows, None]).mul_(-g)
            d_logits.scatter_add_(1, target[s : s + ctx.rows, None], g)
            d_logits = d_logits.to(hidden.dtype)
            if need_hidden:
                d_hidden[s : s + ctx.rows] = d_logits @ w
            if need_weight:
                d_weight.addmm_(d_logits.t().float(), h.float())
        return d_hidden, None if d_weight is None else d_weight.to(weight.dtype), None, None


class _UniformGrad(torch.autograd.Function):
    """Identity whose backward asserts (on the device, no host sync) that every token's incoming
    gradient is the same number: liger's reduction="none" backward scales by one scalar."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        torch._assert_async(torch.all(grad == grad.reshape(-1)[:1]))
        return grad


@functools.lru_cache(maxsize=1)
def _liger():
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except Exception:  # not installed (CPU machines, the default install): the chunked torch path
        return None
    return liger_fused_linear_cross_entropy


def token_log_probs(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Float32 log p of each target [*shape] given hidden [*shape, d] and the output weight [V, d]."""
    shape = target.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_target = target.reshape(-1)
    liger = _liger() if hidden.is_cuda else None
    if liger is not None:  # untested here (no GPU in CI): the torch path below is the reference
        nll = liger(flat_hidden, weight.to(flat_hidden.dtype), flat_target, reduction="none")
        return -_UniformGrad.apply(nll.float()).view(shape)
    rows = chunk_rows(weight.shape[0], hidden.device)
    if flat_hidden.shape[0] <= rows:
        # Every token fits in one chunk (the `ltm fit` default): torch's own fused cross-entropy on
        # it, whose saved log-softmax spares the backward a second output-layer matmul (5-10% faster
        # than the recomputing function at this size); memory stays within the chunk budget.
        logits = F.linear(flat_hidden, weight.to(flat_hidden.dtype)).float()
        return -F.cross_entropy(logits, flat_target, reduction="none").view(shape)
    return ChunkedTokenLogProb.apply(flat_hidden, weight, flat_target, rows).view(shape)


class TokenSequence(TorchDistribution):
    """x_1..x_T given logits [..., T, vocab], or hidden [..., T, d] and weight [vocab, d]; event
    shape [T], batch shape logits.shape[:-2]; log_prob is one fused cross-entropy.

    `Categorical(logits=...)` normalises the logits and keeps a second [tokens x vocab] tensor;
    this keeps only what the cross-entropy needs. Given hidden states and the (tied) output weight,
    the output layer and the cross-entropy run chunked (token_log_probs): no float32 [tokens x
    vocab] logits are ever held. Log-probabilities in float32 even when the decoder ran in bf16."""

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
