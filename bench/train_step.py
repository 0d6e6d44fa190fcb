"""Throughput of one training iteration (T fast steps + 1 slow step) for a model shape.

Prints one JSON object: tokens/s per iteration, seconds per fast (inner) step and per slow step,
and their ratio, with the shape, device and library versions stated. Compile / jit time is the
first iterations' extra time, reported separately and excluded from the rates. Random token ids
stand in for a corpus (throughput does not depend on the text).

    python bench/train_step.py --backend pyro --shape small
    python bench/train_step.py --backend pyro --shape small --compile
    python bench/train_step.py --backend numpyro --shape ltm-m --device cuda --batch 32
    python bench/train_step.py --method langevin --chains 2
(bench/all_methods.py runs every method x backend pair at one shape.)
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np

from ltm_ppl.run import library_versions
from ltm_ppl.config import RunConfig
from ltm_ppl.flops import decoder_forward
from ltm_ppl.inference import training_flops_per_token
from ltm_ppl.inference import descriptor, methods
from report import emit  # bench/ is on sys.path when a bench script runs

SHAPES = {  # name: (n_layer, n_head, d_model, n_z, block_size, vocab, T)
    "tiny": (2, 2, 64, 4, 64, 257, 4),
    "small": (4, 4, 128, 8, 128, 1024, 4),  # the `ltm fit` default until issue 14 (batch 16)
    "default": (2, 4, 64, 8, 256, 1024, 4),  # the `ltm fit` default since issue 14 (batch 8)
    "ltm-s": (3, 8, 512, 24, 1024, 50257, 16),  # the paper's LTM-S (presets.SIZES)
    "ltm-m": (6, 8, 512, 24, 1024, 50257, 16),
    "ltm-l": (12, 8, 512, 96, 1024, 50257, 64),
}


def config(args) -> RunConfig:
    cfg = RunConfig()
    n_layer, n_head, d, n_z, block, vocab, steps = SHAPES[args.shape]
    m = cfg.model
    m.n_layer, m.n_head, m.d_model, m.n_z, m.block_size, m.vocab_size = n_layer, n_head, d, n_z, block, vocab
    cfg.inference.steps = args.steps or steps
    cfg.train.batch_size, cfg.train.device, cfg.train.backend = args.batch, args.device, args.backend
    cfg.train.compile = args.compile
    cfg.inference.method = args.method
    cfg.inference.chains = args.chains
    cfg.model.latent = descriptor(args.method).latent
    return cfg


def timed(fn, sync) -> float:
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("pyro", "numpyro"), default="pyro")
    parser.add_argument("--method", choices=methods(), default="local")
    parser.add_argument("--chains", type=int, default=1, help="langevin chains")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=0, help="fast steps T (default: the shape's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder (pyro)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    from ltm_ppl.inference import create

    cfg = config(args)
    inference = create(cfg)
    sync = getattr(inference, "synchronize", lambda: None)
    T, B, L = cfg.inference.steps, args.batch, cfg.model.block_size
    rng = np.random.default_rng(0)
    batch = rng.integers(0, cfg.model.vocab_size, size=(B, L + 1))

    # First calls compile (torch.compile / jax.jit): timed apart from the steady state.
    first = [timed(lambda: inference.step(batch), sync) for _ in range(args.warmup)]
    full = [timed(lambda: inference.step(batch), sync) for _ in range(args.repeats)]
    iteration = statistics.median(full)
    inner = 0.0
    if args.method == "local":  # the fast step: bound after T steps minus bound after none
        for steps in (T, 0):
            timed(lambda: inference.bound(batch, steps=steps), sync)
        fitted = [timed(lambda: inference.bound(batch, steps=T), sync) for _ in range(args.repeats)]
        at_prior = [timed(lambda: inference.bound(batch, steps=0), sync) for _ in range(args.repeats)]
        inner = max(0.0, statistics.median(fitted) - statistics.median(at_prior)) / T
    slow = max(1e-12, iteration - T * inner)
    result = {
        "benchmark": "train_step",
        "backend": args.backend,
        "method": cfg.inference.method,
        "shape": {"name": args.shape, "n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head,
                  "d_model": cfg.model.d_model, "n_z": cfg.model.n_z, "block_size": L,
                  "vocab_size": cfg.model.vocab_size, "batch": B, "fast_steps": T},
        "device": str(getattr(inference, "device", args.device)),
        "compile": args.compile,
        "params": int(sum(np.asarray(v).size for v in inference.weights().values())),
        "tokens_per_s": B * L / iteration,
        "s_per_iteration": iteration,
        "s_per_fast_step": inner,
        "s_per_slow_step": slow,
        "fast_to_slow_step_ratio": inner / slow if args.method == "local" else None,
        "training_flops_per_token": training_flops_per_token(cfg),
        "decoder_forward_flops_per_token": decoder_forward(cfg.model),
        "achieved_flops": training_flops_per_token(cfg) * B * L / iteration,
        "compile_s": max(0.0, first[0] - iteration),
        "repeats": args.repeats,
        "machine": platform.machine(),
        "versions": library_versions(),
        "argv": sys.argv[1:],
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
