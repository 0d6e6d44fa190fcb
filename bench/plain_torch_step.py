"""The LTM training iteration of `local` written in plain torch, no Pyro: the baseline that prices
the probabilistic program (issue 11). Same decoder, same chunked output layer + cross-entropy,
same fast optimiser and schedules, same fused AdamW slow step and clipping as
ltm_ppl/inference/local/pyro.py at its defaults (init prior/narrow, one noise sample):

    T fast steps: z = loc + exp(log_scale) * eps (fresh eps), loss = -(log p(x | z) - KL(q || p)) / n,
                  gradient w.r.t. (loc, log_scale) only (decoder frozen), one fast Adam step;
    slow step:    the same loss at the fitted q with fresh eps, backward into the decoder, clip,
                  one AdamW step, skipped on the device if anything is not finite.

bench/pyro_vs_plain.py times it against the Pyro step side by side.
"""
from __future__ import annotations

import torch

from ltm_ppl.inference.local.pyro import fast_optimizer, initial_local
from ltm_ppl.inference.schedules import fast_lr, slow_lr
from ltm_ppl.models.torch.likelihood import token_log_probs


def negative_elbo(decoder, tokens, loc, log_scale, eps, autocast: bool):
    """-(sum_i log p(x_i | z_i) - KL(q_i || N(0, I))) / predicted tokens, z = loc + sigma * eps."""
    z = loc + log_scale.exp() * eps
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        hidden = decoder(inputs, z, hidden_only=True)
    hidden = hidden.to(torch.bfloat16) if autocast else hidden  # the output layer in bf16, as in models/torch/program.decode
    loglik = token_log_probs(hidden, decoder.tok_emb.weight, targets).sum(-1)
    kl = 0.5 * (loc**2 + (2 * log_scale).exp() - 1 - 2 * log_scale).sum((-1, -2))
    n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
    return -(loglik - kl).sum() / n_tokens, loglik, kl


class PlainLocal:
    """One `local` training iteration per call of `step`, with its own slow AdamW."""

    def __init__(self, decoder, cfg, device, autocast: bool = False):
        self.decoder, self.cfg, self.device, self.autocast = decoder, cfg, device, autocast
        t = cfg.train
        params = list(decoder.parameters())
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=True)
        self.iteration = 0
        self.shape = (cfg.model.n_z, cfg.model.d_model)

    def fit(self, tokens):
        inf = self.cfg.inference
        loc, log_scale = initial_local(tokens.shape[0], self.shape, inf, self.device)
        loc.requires_grad_(True)
        log_scale.requires_grad_(True)
        opt = fast_optimizer([loc, log_scale], inf)
        for p in self.decoder.parameters():
            p.requires_grad_(False)
        try:
            for t in range(inf.steps):
                for group in opt.param_groups:
                    group["lr"] = fast_lr(t, inf.steps, inf.fast_lr, inf.final_lr_ratio, inf.fast_lr_denominator)
                loss, _, _ = negative_elbo(self.decoder, tokens, loc, log_scale, torch.randn_like(loc), self.autocast)
                loc.grad, log_scale.grad = torch.autograd.grad(loss, [loc, log_scale])
                opt.step()
        finally:
            for p in self.decoder.parameters():
                p.requires_grad_(True)
        return loc.detach(), log_scale.detach()

    def step(self, tokens) -> dict:
        loc, log_scale = self.fit(tokens)
        loss, loglik, kl = negative_elbo(self.decoder, tokens, loc, log_scale, torch.randn_like(loc), self.autocast)
        lr = slow_lr(self.iteration, self.cfg.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.decoder.parameters(), self.cfg.train.grad_clip or float("inf"))
        finite = torch.isfinite(torch.stack([loss.detach(), grad_norm])).all()
        self.optimizer.found_inf = (~finite).float()
        self.optimizer.step()
        self.iteration += 1
        return {"loss": loss.detach(), "kl": kl.mean().detach(), "lr": lr, "grad_norm": grad_norm, "finite": finite}
