"""The KL floor of the published fast loop: run its AdamW (betas 0.9/0.999, eps 1e-8, weight decay
0.01) on the analytic KL term alone (no decoder: the most the loop can shrink KL(q || N(0, I)) in
T steps) from its start (mu = 0.01 N(0,1), log variance = -5 + 0.1 N(0,1)) with its schedule
lr/10 + 0.5 (1 + cos(pi s / T)) (lr - lr/10), lr 0.34, s = 0..T-1, and print the KL per token of
a 1024-token sequence for the paper's latent sizes. Any decoder term only pulls q away from the
prior, so a bound built on the fitted q pays at least this KL.

    python bench/kl_floor.py --out bench/results-kl-floor.json
"""
from __future__ import annotations

import argparse
import json
import math

import torch

SIZES = {"ltm-s": (24, 512, 16), "ltm-m": (24, 512, 16), "ltm-l": (96, 512, 64)}  # n_z, d_z, T


def kl(mu, logvar):
    """KL(N(mu, e^logvar) || N(0, 1)) summed over a sequence's latent dims: [B]."""
    return 0.5 * (mu**2 + logvar.exp() - logvar - 1).flatten(1).sum(1)


def kl_floor(n_z: int, d_z: int, steps: int, tokens: int, lr: float, sequences: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    mu = (0.01 * torch.randn(sequences, n_z, d_z, generator=gen)).requires_grad_(True)
    logvar = (-5 + 0.1 * torch.randn(sequences, n_z, d_z, generator=gen)).requires_grad_(True)
    start = kl(mu, logvar).detach()
    opt = torch.optim.AdamW([mu, logvar], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    for s in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr / 10 + 0.5 * (1 + math.cos(math.pi * s / steps)) * (lr - lr / 10)
        opt.zero_grad()
        (kl(mu, logvar).sum() / tokens).backward()  # the loop's per-token objective, KL term only
        opt.step()
    end = kl(mu, logvar).detach()
    return {"n_z": n_z, "d_z": d_z, "steps": steps, "tokens": tokens, "fast_lr": lr,
            "kl_per_token_start": float(start.mean()) / tokens, "kl_per_token_after": float(end.mean()) / tokens,
            "sigma_mean_after": float((0.5 * logvar.detach()).exp().mean()), "log_variance_mean_after": float(logvar.detach().mean())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=0.34)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = {name: kl_floor(n_z, d_z, T, args.tokens, args.lr, args.sequences, args.seed) for name, (n_z, d_z, T) in SIZES.items()}
    for name, r in rows.items():
        print(f"{name}: {r['n_z']}x{r['d_z']} latent dims, T {r['steps']}: KL/token {r['kl_per_token_start']:.2f} at the start, "
              f"{r['kl_per_token_after']:.2f} after the loop (sigma {r['sigma_mean_after']:.3f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"sizes": rows, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
