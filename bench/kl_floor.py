"""The KL floor of the published fast loop: run its AdamW (betas 0.9/0.999, eps 1e-8, weight decay
0.01) on the analytic KL term alone (no decoder: the most the loop can shrink KL(q || N(0, I)) in
T steps) from its start (mu = 0.01 N(0,1), log variance = -5 + 0.1 N(0,1)) with its schedule
lr/10 + 0.5 (1 + cos(pi s / T)) (lr - lr/10), lr 0.34, s = 0..T-1, and print the KL per token of
a 1024-token sequence for the paper's latent sizes: what the loop reaches when nothing but the KL
pulls.

That is not yet a floor: with a decoder term the log variance's gradient can take either sign (one
eps is reused, so d CE / d log variance = 0.5 sigma eps . d CE / dz), and Adam's step is not
exactly its step size. The floor that holds for any decoder is `adam_floor`: Adam's update of a
coordinate at step t is lr_t m_hat / (sqrt(v_hat) + eps), and by Cauchy-Schwarz
|m_hat| / sqrt(v_hat) <= sqrt(sum_k a_k^2 / b_k) with a_k, b_k the bias-corrected EMA weights of
beta1 and beta2 (1.0 at t = 1, 1.105 at t = 16, whatever the gradients); weight decay pulls a
negative log variance up by lr_t 0.01 |log variance|. So no gradient sequence lifts the mean log
variance above adam_floor's, and the KL, convex in it, is at least the dims times its value there
(mu only adds). `--zero-shot` prints that floor per token of the published zero-shot chunks (1023
predicted tokens) and the step count, step size and latent size at which it would drop below a
given figure (the paper's LTM-M PTB 3.47 nats/token).

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


def adam_ratio_bound(t: int, beta1: float = 0.9, beta2: float = 0.999) -> float:
    """The most |m_hat| / sqrt(v_hat) can be at Adam's step t (1-based), over all gradient sequences."""
    a = [(1 - beta1) * beta1 ** (t - k) / (1 - beta1**t) for k in range(1, t + 1)]
    b = [(1 - beta2) * beta2 ** (t - k) / (1 - beta2**t) for k in range(1, t + 1)]
    return math.sqrt(sum(x * x / y for x, y in zip(a, b)))


def adam_floor(dims: int, steps: int, tokens: int, lr: float = 0.34, weight_decay: float = 0.01,
               start: float = -5.0) -> dict:
    """The least KL(q || N(0, I)) per token after the published loop (AdamW from log variance
    `start` on average, its cosine schedule), whatever the decoder's gradients."""
    log_var = start
    for s in range(steps):
        step = lr / 10 + 0.5 * (1 + math.cos(math.pi * s / steps)) * (lr - lr / 10)
        log_var = min(0.0, log_var * (1 - step * weight_decay) + step * adam_ratio_bound(s + 1))
    per_dim = 0.5 * (math.exp(log_var) - 1 - log_var)
    return {"dims": dims, "steps": steps, "tokens": tokens, "fast_lr": lr, "log_variance_at_most": log_var,
            "kl_per_token_at_least": per_dim * dims / tokens}


def zero_shot_thresholds(figure: float, dims: int = 24 * 512, steps: int = 16, tokens: int = 1023, lr: float = 0.34) -> dict:
    """Where the floor drops below `figure` nats/token: fewest steps (at lr), least lr (at steps),
    most latent vectors of 512 dims (at steps and lr)."""
    more_steps = next(T for T in range(steps, 10 * steps) if adam_floor(dims, T, tokens, lr)["kl_per_token_at_least"] < figure)
    rate = lr
    while adam_floor(dims, steps, tokens, rate)["kl_per_token_at_least"] >= figure:
        rate += 0.001
    vectors = dims // 512
    while adam_floor(vectors * 512, steps, tokens, lr)["kl_per_token_at_least"] >= figure:
        vectors -= 1
    return {"figure": figure, "floor": adam_floor(dims, steps, tokens, lr), "steps_needed": more_steps,
            "fast_lr_needed": round(rate, 3), "latent_vectors_of_512_allowed": vectors}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=0.34)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--zero-shot", type=float, default=None, metavar="NATS",
                    help="Also the floor for LTM-S/M's zero-shot chunks (1023 tokens) against this figure, e.g. 3.47.")
    args = ap.parse_args()
    if args.zero_shot is not None:
        found = zero_shot_thresholds(args.zero_shot)
        floor = found["floor"]
        print(f"any decoder, 24 x 512 latent dims, T 16, lr 0.34, 1023 tokens: log variance <= {floor['log_variance_at_most']:.3f}, "
              f"KL >= {floor['kl_per_token_at_least']:.3f} nats/token; below {args.zero_shot} only with T >= {found['steps_needed']}, "
              f"or lr >= {found['fast_lr_needed']}, or <= {found['latent_vectors_of_512_allowed']} latent vectors")
    rows = {name: kl_floor(n_z, d_z, T, args.tokens, args.lr, args.sequences, args.seed) for name, (n_z, d_z, T) in SIZES.items()}
    for name, r in rows.items():
        print(f"{name}: {r['n_z']}x{r['d_z']} latent dims, T {r['steps']}: KL/token {r['kl_per_token_start']:.2f} at the start, "
              f"{r['kl_per_token_after']:.2f} after the loop (sigma {r['sigma_mean_after']:.3f})")
    if args.out:
        with open(args.out, "w") as f:
            record = {"sizes": rows, "torch": torch.__version__}
            if args.zero_shot is not None:
                record["zero_shot"] = found
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
