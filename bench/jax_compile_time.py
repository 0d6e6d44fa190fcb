"""First-call compile time of the NumPyro `local` training step (trace + lower + XLA compile),
for a model shape with optional depth and fast-step overrides: the cost that must not grow with T
(the fast loop is a lax.scan) nor with depth (the layers are a lax.scan over stacked weights).

    python bench/jax_compile_time.py --shape small
    python bench/jax_compile_time.py --shape small --n-layer 8 --steps 16
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train_step import SHAPES  # noqa: E402

from ltm_ppl.config import RunConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="small")
    parser.add_argument("--n-layer", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    import jax

    from ltm_ppl.inference import create

    cfg = RunConfig()
    n_layer, n_head, d, n_z, block, vocab, steps = SHAPES[args.shape]
    m = cfg.model
    m.n_layer, m.n_head, m.d_model, m.block_size, m.vocab_size = args.n_layer or n_layer, n_head, d, block, vocab
    m.n_z = n_z * m.n_layer // n_layer  # keep z_per_layer
    cfg.inference.steps = args.steps or steps
    cfg.train.batch_size, cfg.train.device, cfg.train.backend = args.batch, "cpu", "numpyro"
    inference = create(cfg)
    batch = np.random.default_rng(0).integers(0, m.vocab_size, size=(args.batch, block + 1))
    tokens = inference.tensor(batch)
    lrs = inference.lrs(cfg.inference.steps)
    start = time.process_time()
    lowered = inference.programs.step.lower(inference.params, inference.opt_state, tokens, lrs, inference.next_key(),
                                            np.float32(1e-3))
    traced = time.process_time()
    lowered.compile()
    done = time.process_time()
    print(json.dumps({"benchmark": "jax_compile_time", "shape": args.shape, "n_layer": m.n_layer, "n_z": m.n_z,
                      "fast_steps": cfg.inference.steps, "batch": args.batch, "trace_lower_s": round(traced - start, 3),
                      "xla_compile_s": round(done - traced, 3), "total_s": round(done - start, 3),
                      "jax": jax.__version__}))


if __name__ == "__main__":
    main()
