"""CPU cost of the sliding window: decoder forward+backward tokens/s with attention_window W vs
full attention, both backends, the two settings interleaved (A B A B ...) so drift hits both.

    python bench/window_attention.py --block 1024 --window 256 --repeats 5 --out bench/results-cpu-window.json

On the CPU the window runs as a masked dense attention (no kernel skips the masked blocks), so
the ratio shows the mask's overhead, not the window's saving; the fused GPU kernels (FlexAttention
under torch.compile, cuDNN's local window in JAX) are not measured here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import numpy as np

from ltm_ppl.config import ModelConfig


def torch_step(cfg: ModelConfig, batch: int):
    import torch

    from ltm_ppl.models.torch.decoder import Decoder

    torch.manual_seed(0)
    decoder = Decoder(cfg)
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size))
    z = torch.randn(batch, cfg.n_z, cfg.d_model)

    def step():
        decoder.zero_grad(set_to_none=True)
        decoder(idx, z).float().logsumexp(-1).mean().backward()

    return step


def jax_step(cfg: ModelConfig, batch: int):
    import jax
    import jax.numpy as jnp

    from ltm_ppl.models.jax import decoder as jax_decoder

    params = jax_decoder.init_params(cfg, jax.random.PRNGKey(0))
    idx = jax.random.randint(jax.random.PRNGKey(1), (batch, cfg.block_size), 0, cfg.vocab_size)
    z = jax.random.normal(jax.random.PRNGKey(2), (batch, cfg.n_z, cfg.d_model))
    grad = jax.jit(jax.grad(lambda p: jax.nn.logsumexp(jax_decoder.decoder_logits(p, cfg, idx, z), -1).mean()))

    def step():
        jax.block_until_ready(grad(params))

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backends", default="pyro,numpyro")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    base = ModelConfig(n_layer=args.layers, n_head=4, d_model=args.d_model, n_z=4 * args.layers, block_size=args.block,
                       vocab_size=1024)
    builders = {"pyro": torch_step, "numpyro": jax_step}
    record = {"device": "cpu", "machine": platform.processor() or platform.machine(), "batch": args.batch,
              "model": dataclasses.asdict(base), "window": args.window, "repeats": args.repeats, "results": {}}
    for backend in args.backends.split(","):
        steps = {name: builders[backend](dataclasses.replace(base, attention_window=w), args.batch)
                 for name, w in (("full", 0), ("window", args.window))}
        times = {name: [] for name in steps}
        for step in steps.values():
            step()  # warm-up (and the jit compilation)
        for _ in range(args.repeats):
            for name, step in steps.items():  # interleaved
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        tokens = args.batch * args.block
        rates = {name: tokens / float(np.median(t)) for name, t in times.items()}
        record["results"][backend] = {
            "tokens_per_s_full": rates["full"], "tokens_per_s_window": rates["window"],
            "window_over_full": rates["window"] / rates["full"],
            "seconds_full": times["full"], "seconds_window": times["window"],
        }
        print(f"{backend}: full {rates['full']:.0f} tok/s, window {rates['window']:.0f} tok/s, "
              f"ratio {rates['window'] / rates['full']:.3f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
