"""
Example: a Latent-Thought Language Model in NumPyro
===================================================

A Latent-Thought LM gives every sequence x_i latent "thought" vectors z_i that a Transformer
decoder reads through cross-attention:

    z_i   ~ Normal(0, I)                                shape [n_z, d]
    x_i,t ~ Categorical(softmax(f_theta(x_i,<t, z_i)))  t = 1..T

This example writes that program in NumPyro with the decoder as a pure JAX function of its
weights, gives each training sequence its own mean-field Gaussian guide
q(z_i) = N(mu_i, diag sigma_i^2), and fits the guide and the decoder together by plain stochastic
variational inference on minibatches (the ELBO with the Gaussian KL in closed form). The corpus
is a few verses of the King James Bible, read as bytes.

The package ltm-ppl builds on this program: there the per-sequence guide is refitted by fast
steps for every batch (the paper's dual-rate variational Bayes), the decoder is the paper's,
and every reported number is a bound on held-out text (`ltm fit --backend numpyro`, `ltm eval`).
"""
import argparse
import math

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI, TraceMeanField_ELBO
from numpyro.optim import Adam

TEXT = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and "
    "void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face "
    "of the waters. And God said, Let there be light: and there was light. And God saw the light, "
    "that it was good: and God divided the light from the darkness. And God called the light Day, "
    "and the darkness he called Night. And the evening and the morning were the first day."
)


def windows(text, length):
    """Non-overlapping byte windows of `length` + 1 tokens: the first conditions, the rest are predicted."""
    data = jnp.array(list(text.encode("utf-8")), dtype=jnp.int32)
    n = (len(data) - 1) // length
    return jnp.stack([data[i * length: i * length + length + 1] for i in range(n)])


def init_decoder(key, vocab, d, length):
    """The weights of one block (self-attention, cross-attention to z, MLP) and a tied embedding."""
    names = {"embed": (vocab, d), "position": (length, d), "mlp_in": (d, 4 * d), "mlp_out": (4 * d, d)}
    names |= {f"{a}_{p}": (d, d) for a in ("self", "cross") for p in ("q", "k", "v", "o")}
    keys = jax.random.split(key, len(names))
    return {name: 0.02 * jax.random.normal(k, shape) for k, (name, shape) in zip(keys, names.items())}


def norm(x):
    return (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5)


def attention(w, prefix, queries, keys, heads, mask=None):
    """Multi-head attention of queries [B, T, d] over keys [B, S, d] with the weights `prefix`_*."""
    def split(x):
        return x.reshape(*x.shape[:-1], heads, -1)
    q, k, v = split(queries @ w[prefix + "_q"]), split(keys @ w[prefix + "_k"]), split(keys @ w[prefix + "_v"])
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return out.reshape(queries.shape) @ w[prefix + "_o"]


def decoder(w, tokens, z, heads):
    """Logits [B, T, vocab] of tokens [B, T] given z [B, n_z, d]."""
    T = tokens.shape[-1]
    h = w["embed"][tokens] + w["position"][:T]
    causal = jnp.tril(jnp.ones((T, T), bool))
    h = h + attention(w, "self", norm(h), norm(h), heads, mask=causal)
    h = h + attention(w, "cross", norm(h), z, heads)
    h = h + jax.nn.gelu(norm(h) @ w["mlp_in"]) @ w["mlp_out"]
    return norm(h) @ w["embed"].T


def model(init, data, batch_size, n_z, d, heads):
    w = {name: numpyro.param(f"decoder.{name}", value) for name, value in init.items()}
    with numpyro.plate("seq", len(data), subsample_size=batch_size) as idx:
        x = data[idx]
        z = numpyro.sample("z", dist.Normal(jnp.zeros((n_z, d)), 1.0).to_event(2))
        logits = decoder(w, x[:, :-1], z, heads)
        numpyro.sample("x", dist.Categorical(logits=logits).to_event(1), obs=x[:, 1:])


def guide(init, data, batch_size, n_z, d, heads):
    """q(z_i) = N(mu_i, diag sigma_i^2), one for every sequence of the corpus."""
    loc = numpyro.param("z_loc", jnp.zeros((len(data), n_z, d)))
    scale = numpyro.param("z_scale", jnp.ones((len(data), n_z, d)), constraint=dist.constraints.positive)
    with numpyro.plate("seq", len(data), subsample_size=batch_size) as idx:
        numpyro.sample("z", dist.Normal(loc[idx], scale[idx]).to_event(2))


def main(args):
    data = windows(TEXT, args.length)
    init_key, svi_key = jax.random.split(jax.random.PRNGKey(args.seed))
    init = init_decoder(init_key, 256, args.d_model, args.length)
    svi = SVI(model, guide, Adam(args.lr), loss=TraceMeanField_ELBO())
    static = (data, args.batch_size, args.n_z, args.d_model, args.heads)
    state = svi.init(svi_key, init, *static)
    update = jax.jit(lambda state: svi.update(state, init, *static))
    tokens = len(data) * args.length  # the subsampled ELBO estimates the whole corpus's (scaled by N / B)
    for step in range(args.num_steps):
        state, loss = update(state)
        if step % args.log_every == 0 or step == args.num_steps - 1:
            print(f"step {step:4d}  -ELBO {float(loss) / tokens:.4f} nats/token")
    params = svi.get_params(state)
    loss = TraceMeanField_ELBO().loss(jax.random.PRNGKey(1), params, model, guide, init, data, len(data), *static[2:])
    print(f"final -ELBO of all {len(data)} sequences: {float(loss) / tokens:.4f} nats/token "
          f"(a uniform byte model: {math.log(256):.4f})")


if __name__ == "__main__":
    assert numpyro.__version__.startswith("0.")
    parser = argparse.ArgumentParser(description="A Latent-Thought LM fitted by SVI in NumPyro")
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
