"""
Example: a Latent-Thought Language Model in Pyro
================================================

A Latent-Thought LM gives every sequence x_i latent "thought" vectors z_i that a Transformer
decoder reads through cross-attention:

    z_i   ~ Normal(0, I)                                shape [n_z, d]
    x_i,t ~ Categorical(softmax(f_theta(x_i,<t, z_i)))  t = 1..T

This example writes that program in a few lines of Pyro, gives each training sequence its own
mean-field Gaussian guide q(z_i) = N(mu_i, diag sigma_i^2), and fits the guide and the decoder
together by plain stochastic variational inference on minibatches (the ELBO with the Gaussian KL
in closed form). The corpus is a few verses of the King James Bible, read as bytes.

The package ltm-ppl builds on this program: there the per-sequence guide is refitted by fast
steps for every batch (the paper's dual-rate variational Bayes), the decoder is the paper's,
and every reported number is a bound on held-out text (`ltm fit`, `ltm eval`).
"""
import argparse
import math

import torch
import torch.nn as nn

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import Adam

TEXT = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and "
    "void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face "
    "of the waters. And God said, Let there be light: and there was light. And God saw the light, "
    "that it was good: and God divided the light from the darkness. And God called the light Day, "
    "and the darkness he called Night. And the evening and the morning were the first day."
)


def windows(text, length):
    """Non-overlapping byte windows of `length` + 1 tokens: the first conditions, the rest are predicted."""
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    n = (len(data) - 1) // length
    return torch.stack([data[i * length: i * length + length + 1] for i in range(n)])


class Decoder(nn.Module):
    """One pre-norm block: causal self-attention, cross-attention to z, an MLP; tied output."""

    def __init__(self, vocab, d, heads, length):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        nn.init.normal_(self.embed.weight, std=0.02)  # small logits at the start
        self.position = nn.Parameter(0.02 * torch.randn(length, d))
        self.self_attention = nn.MultiheadAttention(d, heads, batch_first=True)
        self.cross_attention = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(4))

    def forward(self, tokens, z):
        """Logits [B, T, vocab] of tokens [B, T] given z [B, n_z, d]."""
        T = tokens.shape[-1]
        h = self.embed(tokens) + self.position[:T]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        a = self.norms[0](h)
        h = h + self.self_attention(a, a, a, attn_mask=causal, need_weights=False)[0]
        a = self.norms[1](h)
        h = h + self.cross_attention(a, z, z, need_weights=False)[0]
        h = h + self.mlp(self.norms[2](h))
        return self.norms[3](h) @ self.embed.weight.T


def model(decoder, data, batch_size, n_z, d):
    pyro.module("decoder", decoder)
    with pyro.plate("seq", len(data), subsample_size=batch_size) as idx:
        x = data[idx]
        z = pyro.sample("z", dist.Normal(torch.zeros(n_z, d), 1.0).to_event(2))
        logits = decoder(x[:, :-1], z)
        pyro.sample("x", dist.Categorical(logits=logits).to_event(1), obs=x[:, 1:])


def guide(decoder, data, batch_size, n_z, d):
    """q(z_i) = N(mu_i, diag sigma_i^2), one for every sequence of the corpus."""
    loc = pyro.param("z_loc", lambda: torch.zeros(len(data), n_z, d))
    scale = pyro.param("z_scale", lambda: torch.ones(len(data), n_z, d), constraint=dist.constraints.positive)
    with pyro.plate("seq", len(data), subsample_size=batch_size) as idx:
        pyro.sample("z", dist.Normal(loc[idx], scale[idx]).to_event(2))


def main(args):
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    data = windows(TEXT, args.length)
    decoder = Decoder(256, args.d_model, args.heads, args.length)
    svi = SVI(model, guide, Adam({"lr": args.lr}), loss=TraceMeanField_ELBO())
    tokens = len(data) * args.length  # the subsampled ELBO estimates the whole corpus's (scaled by N / B)
    for step in range(args.num_steps):
        loss = svi.step(decoder, data, args.batch_size, args.n_z, args.d_model)
        if step % args.log_every == 0 or step == args.num_steps - 1:
            print(f"step {step:4d}  -ELBO {loss / tokens:.4f} nats/token")
    loss = TraceMeanField_ELBO().loss(model, guide, decoder, data, len(data), args.n_z, args.d_model)
    print(f"final -ELBO of all {len(data)} sequences: {loss / tokens:.4f} nats/token "
          f"(a uniform byte model: {math.log(256):.4f})")


if __name__ == "__main__":
    assert pyro.__version__.startswith("1.")
    parser = argparse.ArgumentParser(description="A Latent-Thought LM fitted by SVI in Pyro")
    parser.add_argument("-n", "--num-steps", default=300, type=int)
    parser.add_argument("--length", default=32, type=int, help="predicted tokens per window")
    parser.add_argument("--batch-size", default=8, type=int)
    parser.add_argument("--d-model", default=64, type=int)
    parser.add_argument("--heads", default=4, type=int)
    parser.add_argument("--n-z", default=4, type=int, help="latent vectors per sequence")
    parser.add_argument("--lr", default=3e-3, type=float)
    parser.add_argument("--log-every", default=50, type=int)
    parser.add_argument("--seed", default=0, type=int)
    main(parser.parse_args())
