"""`local`'s fast step captured whole under `--compile` (issue 11): one torch.compile'd function
(decoder frozen, tokens, eps, loc, scale parameter, optimiser moments, this step's scalars) ->
(loss, gradients, updated loc / scale parameter / moments), compiled once and reused by every one
of the T fast steps (and every iteration), so compile time does not grow with T.

The loss is the program's own negative ELBO written out once from the Pyro model's sites (the
guide's reparameterised draw, the decoder's hidden states, the TokenSequence log-likelihood, the
analytic KL(q || N(0, I)) of inference/gaussian.py, which Pyro's Normal-Normal KL equals), not
Pyro's tracing machinery, which torch.compile cannot capture; tests/test_compiled_fast_step.py checks it and its gradients
against Pyro's own trace for the same draws. Gradients come from torch.func.grad_and_value (it
compiles with no graph break; autograd.grad inside a compiled region does not), and the fast
optimiser's update (torch's Adam / AdamW / SGD formulas, single-tensor) is in the same graph.
On CUDA the graph runs under mode="reduce-overhead" (CUDA graphs: the shapes are static); on the
CPU in the default mode. Inputs are functional (no in-place mutation of inputs), as CUDA graphs
want; the step's scalars come in as device tensors: schedules cause no recompiles and no syncs.
"""
from __future__ import annotations

import math

import torch

from ... import stop_signals
from ...models.torch.likelihood import token_log_probs
from ...models.torch.program import decode
from ..gaussian import FAST_ADAM_EPS, FAST_BETA1, FAST_BETA2, kl_per_vector, shaped_kl
from ..schedules import fast_lr


def negative_elbo(decoder, autocast: bool, tokens, eps, loc, scale_param, factor: float, shaping=None,
                  sum_loss: bool = False):
    """The fast loop's loss: -(mean_s loglik[s, i] - kl[i]) summed over sequences, per predicted
    token (summed over tokens too with sum_loss: fast_loss "sum"), at z = loc + exp(log_scale) eps [S, B, *event], log_scale = scale_param / factor.
    shaping = (beta, free_bits) tensors replaces the KL by the shaped one (training only)."""
    log_scale = scale_param / factor
    z = loc + log_scale.exp() * eps
    hidden = decode(decoder, tokens, z, autocast)  # [S, B, T, d]
    target = tokens[..., 1:].expand(hidden.shape[:-1])
    loglik = token_log_probs(hidden, decoder.tok_emb.weight, target).sum(-1)  # [S, B]
    # shaping's beta and free bits come as tensors: no recompile when beta warms up
    kl = kl_per_vector(loc, log_scale, torch).sum(-1) if shaping is None else shaped_kl(loc, log_scale, *shaping, torch)
    n_tokens = 1 if sum_loss else max(1, tokens.shape[-1] - 1)
    return -(loglik.mean(0) - kl).sum() / n_tokens


def step_scalars(steps: int, inf_cfg, device) -> torch.Tensor:
    """[steps, 4] float32 on the device: per fast step (lr, 1 - lr * weight decay, lr / (1 -
    beta1^k), sqrt(1 - beta2^k)), k = step + 1, in double on the host as torch's optimisers
    compute them; one copy per fit, none inside the loop."""
    decay = inf_cfg.fast_weight_decay if inf_cfg.optimizer == "adamw" else 0.0
    rows = []
    for t in range(steps):
        lr = fast_lr(t, steps, inf_cfg.fast_lr, inf_cfg.final_lr_ratio, inf_cfg.fast_lr_denominator)
        k = t + 1
        rows.append((lr, 1 - lr * decay, lr / (1 - FAST_BETA1**k), math.sqrt(1 - FAST_BETA2**k)))
    table = torch.tensor(rows, dtype=torch.float32)
    if device.type == "cuda":
        return table.pin_memory().to(device, non_blocking=True)
    return table.to(device)



class CompiledFastStep:
    """One compiled fast step for a decoder; call fit(...) for the T steps. The optimiser is
    inf_cfg.optimizer with torch's defaults as fast_optimizer builds it (Adam / AdamW betas
    (0.9, 0.999), eps 1e-8; SGD without momentum)."""

    def __init__(self, decoder, autocast: bool, optimizer: str, factor: float, mode: str | None = None,
                 backend="inductor", sum_loss: bool = False):
        self.decoder, self.autocast, self.optimizer, self.factor = decoder, autocast, optimizer, factor
        self.sum_loss = sum_loss
        if mode is None:  # CUDA graphs where the shapes are static (always, here); the CPU has none
            mode = "reduce-overhead" if next(decoder.parameters()).is_cuda else None
        self.mode = mode
        self.captured = False  # set after the first call compiled and ran
        options = {"mode": mode} if backend == "inductor" else {}
        self.compiled = torch.compile(self.step, backend=backend, fullgraph=True, dynamic=False, **options)

    def step(self, tokens, eps, loc, scale_param, moments, scalars, shaping):
        """(loss, grad loc, grad scale_param, loc', scale_param', moments') of one fast step."""
        def loss(loc, scale_param):
            return negative_elbo(self.decoder, self.autocast, tokens, eps, loc, scale_param, self.factor, shaping,
                                 self.sum_loss)

        (g_loc, g_scale), value = torch.func.grad_and_value(loss, argnums=(0, 1))(loc, scale_param)
        lr, decay, step_size, bias2_sqrt = scalars[0], scalars[1], scalars[2], scalars[3]
        if self.optimizer == "sgd":
            return value, g_loc, g_scale, loc - lr * g_loc, scale_param - lr * g_scale, moments
        updated, new_moments = [], []
        for param, grad, (m, v) in zip((loc, scale_param), (g_loc, g_scale), moments):
            if self.optimizer == "adamw":
                param = param * decay  # decoupled weight decay first, as torch.optim.AdamW
            m = m.lerp(grad, 1 - FAST_BETA1)
            v = v * FAST_BETA2 + grad * grad * (1 - FAST_BETA2)
            denom = v.sqrt() / bias2_sqrt + FAST_ADAM_EPS
            updated.append(param - step_size * (m / denom))
            new_moments.append((m, v))
        return value, g_loc, g_scale, updated[0], updated[1], tuple(new_moments)

    def fit(self, tokens, loc, scale_param, steps: int, inf_cfg, noise_of, observe_step=None, kl_shaping=None):
        """(loc, scale_param) after `steps` compiled fast steps from the given start; noise_of(t)
        is step t's eps [S, B, *event]. No host sync inside the loop."""
        device = loc.device
        # The decoder's cached RoPE tables, built here if not yet: built inside the grad transform
        # they would be wrapped tensors escaping into module state (compile fails).
        self.decoder.rope(0, tokens.shape[-1] - 1, device)
        self.decoder.latent_rope(device)
        scalars = step_scalars(steps, inf_cfg, device)
        shaping = None
        if kl_shaping is not None:
            shaping = tuple(torch.tensor(float(v), dtype=torch.float32, device=device) for v in kl_shaping)
        moments = tuple((torch.zeros_like(p), torch.zeros_like(p)) for p in (loc, scale_param))
        for t in range(steps):
            stop_signals.check()
            if self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are inputs now
            _, _, _, loc, scale_param, moments = self.compiled(tokens, noise_of(t), loc, scale_param, moments,
                                                                scalars[t], shaping)
            self.captured = True
            if observe_step is not None:
                observe_step(t)
        # Own copies: CUDA graphs overwrite their outputs at the next replay (the next iteration).
        return loc.clone(), scale_param.clone()
