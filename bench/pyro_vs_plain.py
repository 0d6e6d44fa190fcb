"""Pyro's `local` training iteration against the same iteration in plain torch
(bench/plain_torch_step.py), timed interleaved in one process: the PPL's cost as a ratio.

Each repeat times one Pyro iteration and one plain iteration back to back (order alternating), on
the same batch; the reported ratio is the median over repeats of pyro_s / plain_s, in wall time and
in process CPU time (at one thread the robust one on a shared machine). Same shape,
decoder weights and kernels. `--before DIR` also times an older ltm-ppl (a copy of its package
renamed `ltm_ppl_before` in DIR, see docs/benchmarks.md) in the same interleaving.

    OMP_NUM_THREADS=1 python bench/pyro_vs_plain.py --shape tiny --repeats 7 --out bench/results-cpu-pyro-vs-plain-tiny.json

The older package, e.g. at 76e5588 (before issue 11):
    mkdir -p /tmp/old /tmp/pkg && git archive 76e5588 ltm_ppl | tar -x -C /tmp/old
    mv /tmp/old/ltm_ppl /tmp/pkg/ltm_ppl_before
    grep -rl '"ltm_ppl\.' /tmp/pkg/ltm_ppl_before | xargs sed -i 's/"ltm_ppl\./"ltm_ppl_before./g'
    ... --before /tmp/pkg
"""
from __future__ import annotations

import argparse
import copy
import importlib
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # bench/ for its sibling modules

from plain_torch_step import PlainLocal  # noqa: E402
from train_step import SHAPES  # noqa: E402

from ltm_ppl.run import library_versions  # noqa: E402
from ltm_ppl.config import RunConfig  # noqa: E402
from report import emit, shape_record  # bench/ is on sys.path when a bench script runs


def make_config(shape: str, batch: int, device: str, steps: int = 0, compile_: bool = False) -> RunConfig:
    cfg = RunConfig()
    n_layer, n_head, d, n_z, block, vocab, T = SHAPES[shape]
    m = cfg.model
    m.n_layer, m.n_head, m.d_model, m.n_z, m.block_size, m.vocab_size = n_layer, n_head, d, n_z, block, vocab
    cfg.inference.steps = steps or T
    cfg.train.batch_size, cfg.train.device, cfg.train.compile = batch, device, compile_
    return cfg


def before_inference(path: str, cfg: RunConfig):
    """The older package's Pyro `local`, built from the same settings and weights."""
    sys.path.insert(0, path)
    old = importlib.import_module("ltm_ppl_before.config")
    old_cfg = old.RunConfig()
    for section in ("model", "train"):
        for key, value in vars(getattr(cfg, section)).items():
            if hasattr(getattr(old_cfg, section), key):
                setattr(getattr(old_cfg, section), key, value)
    old_cfg.inference.steps = cfg.inference.steps
    return importlib.import_module("ltm_ppl_before.inference").create(old_cfg)


def timed(fn, sync) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): on a shared machine at one thread the CPU time
    is what the step itself costs, the wall time includes waiting for the cores."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=0, help="fast steps T (default: the shape's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--before", default=None, help="a directory holding an older package as ltm_ppl_before")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    from ltm_ppl.inference import create

    cfg = make_config(args.shape, args.batch, args.device, args.steps)
    pyro_inf = create(cfg)
    device = pyro_inf.device
    plain = PlainLocal(copy.deepcopy(pyro_inf.decoder), cfg, device, autocast=pyro_inf.autocast)
    runners = {"pyro": lambda b: pyro_inf.step(b), "plain_torch": lambda b: plain.step(torch.as_tensor(b, device=device))}
    if args.before:
        old = before_inference(args.before, cfg)
        old.load_weights(pyro_inf.weights())
        runners["pyro_before"] = lambda b: old.step(b)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    B, L = args.batch, cfg.model.block_size
    batch = np.random.default_rng(0).integers(0, cfg.model.vocab_size, size=(B, L + 1))

    first = {name: [timed(lambda: run(batch), sync)[0] for _ in range(args.warmup)] for name, run in runners.items()}
    times = {name: [] for name in runners}
    cpu_times = {name: [] for name in runners}
    names = list(runners)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else reversed(names):  # alternate the order: no position bias
            wall, cpu = timed(lambda: runners[name](batch), sync)
            times[name].append(wall)
            cpu_times[name].append(cpu)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    cpu_median = {name: statistics.median(ts) for name, ts in cpu_times.items()}
    ratios = [p / q for p, q in zip(times["pyro"], times["plain_torch"])]
    cpu_ratios = [p / q for p, q in zip(cpu_times["pyro"], cpu_times["plain_torch"])]
    result = {
        "benchmark": "pyro_vs_plain",
        "method": "local",
        "shape": shape_record(args.shape, cfg, B),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "tokens_per_s": {name: B * L / s for name, s in median.items()},
        "s_per_iteration": median,
        "s_per_iteration_all": times,
        "first_calls_s": first,
        "pyro_over_plain_median_ratio": statistics.median(ratios),
        "pyro_over_plain_ratios": ratios,
        "cpu_tokens_per_s": {name: B * L / s for name, s in cpu_median.items()},
        "cpu_s_per_iteration_all": cpu_times,
        "pyro_over_plain_cpu_median_ratio": statistics.median(cpu_ratios),
        "load_average": list(os.getloadavg()),
        "repeats": args.repeats,
        "machine": platform.machine(),
        "versions": library_versions(),
        "argv": sys.argv[1:],
    }
    if "pyro_before" in times:
        result["pyro_before_over_pyro_median_ratio"] = statistics.median(
            [b / a for a, b in zip(times["pyro"], times["pyro_before"])])
        result["pyro_before_over_pyro_cpu_median_ratio"] = statistics.median(
            [b / a for a, b in zip(cpu_times["pyro"], cpu_times["pyro_before"])])
    emit(result, args.out)


if __name__ == "__main__":
    main()
