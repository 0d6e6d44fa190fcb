"""Seconds per NumPyro `local` training iteration (wall and process CPU time), for before/after
comparisons of the ltm_ppl on PYTHONPATH: run it alternately against two checkouts, e.g.

    PYTHONPATH=/path/to/old/checkout python bench/numpyro_step_time.py --shape tiny
    PYTHONPATH=$PWD python bench/numpyro_step_time.py --shape tiny
CPU time is robust to other jobs sharing the cores; wall time is what a user sees. One JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train_step import SHAPES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    import ltm_ppl
    from ltm_ppl.config import RunConfig
    from ltm_ppl.inference import create

    cfg = RunConfig()
    n_layer, n_head, d, n_z, block, vocab, steps = SHAPES[args.shape]
    m = cfg.model
    m.n_layer, m.n_head, m.d_model, m.n_z, m.block_size, m.vocab_size = n_layer, n_head, d, n_z, block, vocab
    cfg.inference.steps = steps
    cfg.train.batch_size, cfg.train.device, cfg.train.backend = args.batch, "cpu", "numpyro"
    inference = create(cfg)
    batch = np.random.default_rng(0).integers(0, vocab, size=(args.batch, block + 1))
    start = time.perf_counter()
    inference.step(batch)
    inference.synchronize()
    first = time.perf_counter() - start
    inference.step(batch)
    wall, cpu = [], []
    for _ in range(args.repeats):
        inference.synchronize()
        t, c = time.perf_counter(), time.process_time()
        for _ in range(args.iters):
            inference.step(batch)
        inference.synchronize()
        wall.append((time.perf_counter() - t) / args.iters)
        cpu.append((time.process_time() - c) / args.iters)
    print(json.dumps({"label": args.label, "package": ltm_ppl.__file__, "shape": args.shape, "batch": args.batch,
                      "tokens": args.batch * block, "first_call_s": round(first, 3), "wall_s": min(wall),
                      "cpu_s": min(cpu), "wall_all": wall, "cpu_all": cpu}))


if __name__ == "__main__":
    main()
