"""GPU training-iteration speed for a lent H200 (issue 11): tokens/s and peak memory of one `local`
iteration (T fast steps + 1 slow step), batch 32 x 1024, bf16, GPT-2 vocabulary, for both backends
and their plain baselines (Pyro, plain torch: bench/plain_torch_step.py; NumPyro, plain JAX:
bench/plain_jax_step.py, builders in bench/gpu_speed_jax.py), LTM-M at T = 16 first, then LTM-L
at T = 64. Each configuration runs in its own subprocess under a time box, and its
JSON is written to the output folder as soon as it is measured (a later one hanging or running
out of memory loses nothing). Order = priority.

    python bench/gpu_speed.py --out "$OUT"                          # the device run
    python bench/gpu_speed.py --shape tiny --device cpu --out /tmp/g  # the CPU rehearsal (tests)
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
    ("ltm-m-pyro", "ltm-m", 16, "pyro"),
    ("ltm-m-numpyro", "ltm-m", 16, "numpyro"),
    ("ltm-m-plain-torch", "ltm-m", 16, "plain_torch"),
    ("ltm-m-plain-jax", "ltm-m", 16, "plain_jax"),
    ("ltm-m-pyro-compile", "ltm-m", 16, "pyro_compile"),
    # --compile: the whole fast step compiled (CUDA graphs on CUDA); + the slow step's decoder in CUDA graphs
    ("ltm-m-pyro-compile-reduce-overhead", "ltm-m", 16, "pyro_compile_ro"),
    ("ltm-m-pyro-compile-decoder-only", "ltm-m", 16, "pyro_compile_decoder"),  # --compile before the whole step
    ("ltm-l-pyro", "ltm-l", 64, "pyro"),
    ("ltm-l-numpyro", "ltm-l", 64, "numpyro"),
    ("ltm-l-plain-torch", "ltm-l", 64, "plain_torch"),
    ("ltm-l-plain-jax", "ltm-l", 64, "plain_jax"),
]


def build_torch(runner: str, shape: str, steps: int, batch: int, device: str):
    """(step(tokens), synchronize, peak-memory reader, device) of a torch runner."""
    import numpy as np
    import torch

    sys.path.insert(0, BENCH)
    from plain_torch_step import PlainLocal
    from pyro_vs_plain import make_config

    from ltm_ppl.inference import create

    cfg = make_config(shape, batch, device, steps, compile_=runner.startswith("pyro_compile"))
    inference = create(cfg)
    if runner == "pyro_compile_ro":  # the slow step's decoder under CUDA graphs too (`--compile`: its default mode)
        inference.net = torch.compile(inference.decoder, mode="reduce-overhead")
    if runner == "pyro_compile_decoder":  # the fast loop eager (Pyro traces), only the decoder compiled
        inference.compile_fast_step = False
    dev = inference.device
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak = (lambda: torch.cuda.max_memory_allocated() / 2**30) if cuda else (lambda: None)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, size=(batch, cfg.model.block_size + 1))
    if runner.startswith("pyro"):
        def step():
            return inference.step(tokens)

        # What ran the fast steps, read after the runs (the JSON's fast_step_compiled).
        step.info = lambda: {"fast_step_compiled": getattr(inference, "_compiled_step", None) is not None
                             and inference.compile_fast_step}
        return step, sync, peak, dev, cfg
    plain = PlainLocal(inference.decoder, cfg, dev, autocast=inference.autocast)
    on_device = torch.as_tensor(tokens, device=dev)
    return (lambda: plain.step(on_device)), sync, peak, dev, cfg


def build_jax(runner: str, shape: str, steps: int, batch: int, device: str):
    sys.path.insert(0, BENCH)
    from gpu_speed_jax import build_jax as build

    return build(runner, shape, steps, batch, device)


RUNNERS = {"pyro": build_torch, "pyro_compile": build_torch, "pyro_compile_ro": build_torch,
           "pyro_compile_decoder": build_torch, "plain_torch": build_torch,
           "numpyro": build_jax, "plain_jax": build_jax}


def _device_name(dev, cuda_torch: bool) -> str:
    if cuda_torch:
        import torch

        return torch.cuda.get_device_name()
    return getattr(dev, "device_kind", None) or platform.processor()  # a JAX device names its kind


def measure_one(label: str, shape: str, steps: int, runner: str, batch: int, device: str, repeats: int) -> dict:
    step, sync, peak, dev, cfg = RUNNERS[runner](runner, shape, steps, batch, device)
    cuda_torch = RUNNERS[runner] is build_torch and str(dev).startswith("cuda")
    if cuda_torch:  # JAX runners read their device's own peak (memory_stats); never import torch there
        import torch

        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    step()  # a second warm-up call: compiled graphs may specialise once more
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    tokens = batch * cfg.model.block_size
    from ltm_ppl.run import library_versions

    return {"label": label, "runner": runner, "shape": shape, "fast_steps": cfg.inference.steps, "batch": batch,
            "block_size": cfg.model.block_size, "vocab_size": cfg.model.vocab_size, "device": str(dev),
            "device_name": _device_name(dev, cuda_torch),
            "tokens_per_s": tokens / median, "s_per_iteration": median, "s_all": times,
            "first_call_s": first, "compile_s": max(0.0, first - median), "peak_memory_gib": peak(),
            "repeats": repeats, "versions": library_versions(), **getattr(step, "info", dict)()}


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
    with open(os.path.join(args.out, "gpu-speed-summary.json"), "w") as fh:
        fh.write(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
