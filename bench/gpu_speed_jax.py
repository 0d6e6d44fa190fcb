"""GPU training-iteration speed of the JAX side for a lent H200 (issue 11): tokens/s and peak
memory of one `local` iteration (T fast steps + 1 slow step), batch 32 x 1024, bf16 (the NumPyro
backend's GPU precision), GPT-2 vocabulary, for the NumPyro backend and the plain-JAX baseline
(bench/plain_jax_step.py), LTM-M at T = 16 first, then LTM-L at T = 64. The JSON of each entry
has the shape of bench/gpu_speed.py's (the torch half), so the two merge into one table. Each
configuration runs in its own subprocess under a time box and its JSON is written to the output
folder as soon as it is measured. Order = priority.

    python bench/gpu_speed_jax.py --out "$OUT"                            # the device run
    python bench/gpu_speed_jax.py --shape tiny --device cpu --out /tmp/g  # the CPU rehearsal
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))

# (label, shape, fast steps T, runner) in priority order; shapes from bench/train_step.py SHAPES.
JOBS = [
    ("ltm-m-numpyro", "ltm-m", 16, "numpyro"),
    ("ltm-m-plain-jax", "ltm-m", 16, "plain_jax"),
    ("ltm-l-numpyro", "ltm-l", 64, "numpyro"),
    ("ltm-l-plain-jax", "ltm-l", 64, "plain_jax"),
]


def build_jax(runner: str, shape: str, steps: int, batch: int, device: str):
    """(step(), synchronize, peak-memory reader in GiB, device, cfg) of a JAX runner."""
    import jax
    import numpy as np

    sys.path.insert(0, BENCH)
    from plain_jax_step import PlainRunner, config

    from ltm_ppl.inference import create

    cfg = config(shape, batch, device)
    if steps:
        cfg.inference.steps = steps
    inference = create(cfg)
    dev = inference.device

    def peak():
        stats = dev.memory_stats() or {}
        return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None

    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, size=(batch, cfg.model.block_size + 1))
    if runner == "numpyro":
        return (lambda: inference.step(tokens)), inference.synchronize, peak, dev, cfg
    plain = PlainRunner(inference)
    del inference.params, inference.opt_state  # the plain runner's own copies only: a fair peak memory
    on_device = jax.device_put(np.asarray(tokens, np.int32), dev)
    return (lambda: plain.run(on_device)), (lambda: jax.block_until_ready(plain.params)), peak, dev, cfg


RUNNERS = {"numpyro": build_jax, "plain_jax": build_jax}


def measure_one(label: str, shape: str, steps: int, runner: str, batch: int, device: str, repeats: int) -> dict:
    step, sync, peak, dev, cfg = RUNNERS[runner](runner, shape, steps, batch, device)
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    step()  # a second warm-up call (committed inputs may specialise once more)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    tokens = batch * cfg.model.block_size
    from ltm_ppl.checkpoint import library_versions

    return {"label": label, "runner": runner, "shape": shape, "fast_steps": cfg.inference.steps, "batch": batch,
            "block_size": cfg.model.block_size, "vocab_size": cfg.model.vocab_size, "device": str(dev),
            "device_name": getattr(dev, "device_kind", platform.processor()),
            "tokens_per_s": tokens / median, "s_per_iteration": median, "s_all": times,
            "first_call_s": first, "compile_s": max(0.0, first - median), "peak_memory_gib": peak(),
            "repeats": repeats, "versions": library_versions()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for the JSON files ($OUT)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default=None, help="run every job at this shape instead (tiny: the CPU rehearsal)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--time-box", type=int, default=150, help="seconds per configuration")
    parser.add_argument("--only", default=None, help="comma-separated labels")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: label,shape,steps,runner
    args = parser.parse_args()

    if args.one:
        label, shape, steps, runner = args.one.split(",")
        print(json.dumps(measure_one(label, shape, int(steps), runner, args.batch, args.device, args.repeats)))
        return
    os.makedirs(args.out, exist_ok=True)
    jobs = [j for j in JOBS if args.only is None or j[0] in args.only.split(",")]
    summary = []
    for label, shape, steps, runner in jobs:
        if args.shape:
            shape, steps = args.shape, 0 if args.shape != "tiny" else 2
        one = ",".join([label, shape, str(steps), runner])
        cmd = [sys.executable, __file__, "--one", one, "--device", args.device, "--batch", str(args.batch),
               "--repeats", str(args.repeats)]
        start = time.perf_counter()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.time_box)
            if out.returncode == 0:
                result = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                result = {"label": label, "error": out.stderr.strip().splitlines()[-1:] or ["exit %d" % out.returncode]}
        except subprocess.TimeoutExpired:
            result = {"label": label, "error": f"time box of {args.time_box} s exceeded"}
        result["wall_s"] = time.perf_counter() - start
        with open(os.path.join(args.out, f"gpu-speed-{label}.json"), "w") as fh:  # at once: nothing lost later
            fh.write(json.dumps(result, indent=2) + "\n")
        summary.append(result)
        print(json.dumps({k: result.get(k) for k in ("label", "tokens_per_s", "peak_memory_gib", "compile_s", "error")}), flush=True)
    with open(os.path.join(args.out, "gpu-speed-jax-summary.json"), "w") as fh:
        fh.write(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
