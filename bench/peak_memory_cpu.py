"""Peak CPU memory of Pyro `local` training iterations: the rise of the process's peak resident set
(ru_maxrss) over its resident set just before the first iteration, each variant in a fresh
subprocess. `--before DIR` adds an older ltm-ppl (its package copied as ltm_ppl_before in DIR).

    OMP_NUM_THREADS=1 python bench/peak_memory_cpu.py --shape small --batch 16 --out bench/results-cpu-peak-memory-small.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from report import emit  # bench/ is on sys.path when a bench script runs

CHILD = r"""
import json, os, resource, sys
sys.path.insert(0, {bench!r})
from pyro_vs_plain import make_config, before_inference
import numpy as np
cfg = make_config({shape!r}, {batch}, "cpu", {steps})
if {before!r}:
    inference = before_inference({before!r}, cfg)
else:
    from ltm_ppl.inference import create
    inference = create(cfg)
batch = np.random.default_rng(0).integers(0, cfg.model.vocab_size, size=({batch}, cfg.model.block_size + 1))
page = os.sysconf("SC_PAGE_SIZE")
rss = int(open("/proc/self/statm").read().split()[1]) * page
for _ in range({iters}):
    inference.step(batch)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"rss_before_mb": rss / 2**20, "peak_mb": peak / 2**20, "rise_mb": (peak - rss) / 2**20}}))
"""


def measure(shape, batch, steps, iters, before) -> dict:
    code = CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), shape=shape, batch=batch, steps=steps,
                        iters=iters, before=before or "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=0, help="fast steps T (default: the shape's)")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--before", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = {"benchmark": "peak_memory_cpu", "shape": args.shape, "batch": args.batch, "steps": args.steps,
              "iters": args.iters, "after": measure(args.shape, args.batch, args.steps, args.iters, None)}
    if args.before:
        result["before"] = measure(args.shape, args.batch, args.steps, args.iters, args.before)
    emit(result, args.out)


if __name__ == "__main__":
    main()
