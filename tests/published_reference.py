"""The published LTM decoder's function, written for the tests from reading the authors' model.py
(not copied): its parameter names (tok_embeddings, layers.i.attention.wq / wk / wv / wo,
cross_attention.*, attention_norm, cross_attention_norm, ffn_norm, feed_forward.gate_proj /
up_proj / down_proj, norm, output tied to tok_embeddings), rotary on interleaved pairs (2i, 2i+1)
written here with complex numbers, separate projections, grouped key/value heads, the causal
sliding window, and the published latent positions: interval = max_seq_len // max_z_len over the
TOTAL number of latent vectors, layer l's m vectors at 0, interval, ..., (m-1) interval.

Also the published checkpoint dict (train_ltm.py's torch.save) and the published zero-shot number
(sampling/zero-shot-ppl at commit 3217b8c with model.py's elbo(eval_mode=True)).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ARGS = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50258, multiple_of=32, max_seq_len=32,
            dropout=0.0, n_prior_layers=0, n_cls_tokens=0, window_size=8, use_liger=True, max_z_len=4,
            use_z_pos_emb=True)


def hidden_width(args: dict) -> int:
    width = int(2 * 4 * args["dim"] / 3)
    return args["multiple_of"] * math.ceil(width / args["multiple_of"])


def rms(x, weight, eps=1e-5):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def rotate_pairs(x, positions, base=10000.0):
    """x [B, L, heads, hd]: each pair (2i, 2i+1) as one complex number turned by positions * base^(-2i/hd)."""
    hd = x.shape[-1]
    angle = positions[:, None].double() * base ** (-torch.arange(0, hd, 2).double() / hd)
    turn = torch.polar(torch.ones_like(angle), angle).to(torch.complex64)  # [L, hd/2]
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], hd // 2, 2).contiguous())
    return torch.view_as_real(pairs * turn[None, :, None, :]).reshape(x.shape)


class Projections(nn.Module):
    def __init__(self, d, heads, kv_heads):
        super().__init__()
        hd = d // heads
        self.wq, self.wk = nn.Linear(d, d, bias=False), nn.Linear(d, kv_heads * hd, bias=False)
        self.wv, self.wo = nn.Linear(d, kv_heads * hd, bias=False), nn.Linear(d, d, bias=False)


class Block(nn.Module):
    def __init__(self, args):
        super().__init__()
        d, kv = args["dim"], args["n_kv_heads"] or args["n_heads"]
        self.attention = Projections(d, args["n_heads"], kv)
        self.cross_attention = Projections(d, args["n_heads"], kv)
        self.attention_norm, self.cross_attention_norm, self.ffn_norm = (nn.Parameter(torch.ones(d)) for _ in range(3))
        hidden = hidden_width(args)
        self.feed_forward = nn.Module()
        self.feed_forward.gate_proj = nn.Linear(d, hidden, bias=False)
        self.feed_forward.up_proj = nn.Linear(d, hidden, bias=False)
        self.feed_forward.down_proj = nn.Linear(hidden, d, bias=False)


class PublishedLTM(nn.Module):
    def __init__(self, args: dict):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args["vocab_size"], args["dim"])
        self.layers = nn.ModuleList(Block(args) for _ in range(args["n_layers"]))
        self.norm = nn.Parameter(torch.ones(args["dim"]))

    def state_dict_published(self) -> dict:
        """The names of the published model's state_dict (norms are modules with a .weight there;
        output.weight is the tied embedding, saved under both names)."""
        out = {}
        for name, p in self.named_parameters():
            name = name if name.endswith("weight") else name + ".weight"
            out[name] = p.detach().clone()
        out["output.weight"] = out["tok_embeddings.weight"]
        return out

    def attend(self, proj, x, source, q_pos, k_pos, mask):
        a = self.args
        B, L, d = x.shape
        heads, kv = a["n_heads"], a["n_kv_heads"] or a["n_heads"]
        hd = d // heads
        q = rotate_pairs(proj.wq(x).view(B, L, heads, hd), q_pos)
        k = rotate_pairs(proj.wk(source).view(B, source.shape[1], kv, hd), k_pos)
        v = proj.wv(source).view(B, source.shape[1], kv, hd)
        k, v = (t.repeat_interleave(heads // kv, dim=2) for t in (k, v))  # query head h reads kv head h // rep
        scores = torch.einsum("blhe,bmhe->bhlm", q, k) / math.sqrt(hd)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        y = torch.einsum("bhlm,bmhe->blhe", scores.softmax(-1), v).reshape(B, L, d)
        return proj.wo(y)

    def forward(self, tokens, z):
        a = self.args
        B, L = tokens.shape
        per_layer = a["max_z_len"] // a["n_layers"]
        positions = torch.arange(L)
        latent_positions = torch.arange(per_layer) * (a["max_seq_len"] // a["max_z_len"])
        i, j = positions[:, None], positions[None, :]
        mask = (j <= i) & (j > i - a["window_size"])
        zs = z.view(B, a["n_layers"], per_layer, a["dim"])
        h = self.tok_embeddings(tokens)
        for n, block in enumerate(self.layers):
            x = rms(h, block.attention_norm)
            h = h + self.attend(block.attention, x, x, positions, positions, mask)
            h = h + self.attend(block.cross_attention, rms(h, block.cross_attention_norm), zs[:, n], positions,
                                latent_positions, None)
            ff = block.feed_forward
            x = rms(h, block.ffn_norm)
            h = h + ff.down_proj(F.silu(ff.gate_proj(x)) * ff.up_proj(x))
        return rms(h, self.norm) @ self.tok_embeddings.weight.T


def published_model(seed: int, args: dict = ARGS, std: float = 0.3) -> PublishedLTM:
    """Weights wider than the published init (as trained weights are), so the rotary layout and
    latent positions move the logits well above float32 noise."""
    gen = torch.Generator().manual_seed(seed)
    model = PublishedLTM(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if p.dim() == 1 else 0.0) + std * torch.randn(p.shape, generator=gen))
    return model


def checkpoint_dict(model: PublishedLTM, prefix: str = "liger", config: dict | None = None) -> dict:
    """What train_ltm.py saves. prefix: "liger" (each block's attention compiled, as use_liger does:
    layers.i.attention._orig_mod.wq.weight), "plain" (no wrapper; FeedForward's w1 / w3 / w2), or
    "ddp-compiled" (module._orig_mod. on the whole model, over the liger names)."""
    state = model.state_dict_published()
    if prefix in ("liger", "ddp-compiled"):
        state = {k.replace(".attention.", ".attention._orig_mod.").replace(".cross_attention.", ".cross_attention._orig_mod.")
                 if k.startswith("layers.") else k: v for k, v in state.items()}
    if prefix == "plain":
        names = {".gate_proj.": ".w1.", ".up_proj.": ".w3.", ".down_proj.": ".w2."}
        for ours, theirs in names.items():
            state = {k.replace(ours, theirs): v for k, v in state.items()}
    if prefix == "ddp-compiled":
        state = {"module._orig_mod." + k: v for k, v in state.items()}
    args = dict(model.args, use_liger=prefix != "plain")
    return {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 4e-4, "params": [0, 1]}]},
            "model_args": args, "iter_num": 1000, "best_val_loss": torch.tensor(3.25),
            "config": config if config is not None else {"num_steps": 3, "fast_lr": 0.34, "z_dim": args["dim"],
                                                          "max_z_len": args["max_z_len"], "out_dir": "output/x"},
            "rng_state": torch.get_rng_state()}


def zero_shot(model: PublishedLTM, chunk: torch.Tensor, mu0, logvar0, eps, steps: int, lr: float) -> dict:
    """The published zero-shot number of one batch of chunks [B, N + 1] (sample_owt_0shot.py with
    PosteriorOptimizer._adamVI and elbo(eval_mode=True)): AdamW (0.9, 0.999, eps 1e-8, weight decay
    0.01) on (mu, log variance) from the given start, one eps at every step, step size
    lr/10 + 0.5 (1 + cos(pi s / T)) (lr - lr/10), the loss the SUM over the batch of
    (cross-entropy summed over tokens + analytic KL summed over latent dims); then per sequence
    exp((cross-entropy + KL) / N) at that eps, averaged over the batch."""
    x, y = chunk[:, :-1], chunk[:, 1:]

    def terms(mu, logvar):
        logits = model(x, mu + eps * torch.exp(0.5 * logvar))
        ce = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").sum(1)
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).sum((1, 2))
        return ce, kl

    mu, logvar = mu0.clone().requires_grad_(True), logvar0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([mu, logvar], lr=lr, betas=(0.9, 0.999), eps=1e-8)  # torch's default weight decay 0.01
    for s in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr / 10 + 0.5 * (1 + math.cos(math.pi * s / steps)) * (lr - lr / 10)
        opt.zero_grad()
        ce, kl = terms(mu, logvar)
        (ce + kl).sum().backward()
        opt.step()
    with torch.no_grad():
        ce, kl = terms(mu, logvar)
        N = x.shape[1]
        return {"per_sequence_perplexity": float(torch.exp((ce + kl) / N).mean()), "kl": kl, "ce": ce,
                "mu": mu.detach(), "logvar": logvar.detach()}
