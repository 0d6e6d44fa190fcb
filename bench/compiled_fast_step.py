"""What `--compile`'s whole compiled fast step buys (issue 11): Pyro `local` training iterations
(T fast steps + 1 slow step) with no compile, with today's decoder-only compile (the decoder in
torch.compile, the fast loop's Pyro traces, autograd and torch.optim eager: `compile_fast_step`
off) and with the whole fast step compiled (local/compiled_fast_step.py, what `--compile` runs),
interleaved, median of --repeats; then the first call's compile seconds of the whole-step route
at T = 1, 4, 16 (fresh dynamo state, inductor's caches off: each one a real compile), of the fast
steps alone and of the first iteration (which adds the slow step's decoder).

    OMP_NUM_THREADS=1 nice -n 15 python bench/compiled_fast_step.py --shape tiny \\
        --out bench/results-cpu-compiled-fast-step-tiny.json
"""
from __future__ import annotations

import os

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # compile times: no cache hits

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # bench/ for its sibling modules

from pyro_vs_plain import make_config, timed  # noqa: E402
from report import emit, shape_record  # noqa: E402

from ltm_ppl.run import library_versions  # noqa: E402


def build(variant: str, shape: str, batch: int, device: str, steps: int = 0):
    from ltm_ppl.inference import create

    inference = create(make_config(shape, batch, device, steps, compile_=variant != "eager"))
    inference.compile_fast_step = variant == "whole_step_compile"
    return inference


def first_call(variant: str, shape: str, batch: int, device: str, steps: int, sync, batch_tokens) -> dict:
    """Seconds of the first and second (steady) call, and their difference (the compile): of the T
    fast steps alone (fit_posterior), then of a whole iteration (which adds the slow step's
    decoder compile)."""
    torch._dynamo.reset()
    inference = build(variant, shape, batch, device, steps)
    tokens = inference.tensor(batch_tokens)
    fast = [timed(lambda: inference.fit_posterior(tokens, steps), sync)[0] for _ in range(2)]
    iteration = [timed(lambda: inference.step(batch_tokens), sync)[0] for _ in range(2)]
    return {"fast_steps": steps, "fast_steps_first_call_s": fast[0], "fast_steps_second_call_s": fast[1],
            "fast_steps_compile_s": max(0.0, fast[0] - fast[1]),
            "iteration_first_call_s": iteration[0], "iteration_second_call_s": iteration[1],
            "iteration_compile_s": max(0.0, iteration[0] - iteration[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile-steps", default="1,4,16", help="T values whose first-call compile time is measured")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    variants = ("eager", "decoder_compile", "whole_step_compile")
    runners = {v: build(v, args.shape, args.batch, args.device) for v in variants}
    cfg = runners["eager"].cfg
    device = runners["eager"].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    B, L = args.batch, cfg.model.block_size
    batch = np.random.default_rng(0).integers(0, cfg.model.vocab_size, size=(B, L + 1))

    first = {v: [timed(lambda: runners[v].step(batch), sync)[0] for _ in range(args.warmup)] for v in variants}
    times = {v: [] for v in variants}
    cpu_times = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants if r % 2 == 0 else reversed(variants):  # alternate the order: no position bias
            wall, cpu = timed(lambda: runners[v].step(batch), sync)
            times[v].append(wall)
            cpu_times[v].append(cpu)
    median = {v: statistics.median(ts) for v, ts in times.items()}
    ratio = {v: statistics.median([a / b for a, b in zip(times[v], times["eager"])]) for v in variants}
    cpu_ratio = {v: statistics.median([a / b for a, b in zip(cpu_times[v], cpu_times["eager"])]) for v in variants}
    del runners

    compile_steps = [int(t) for t in args.compile_steps.split(",") if t]
    compile_time = [first_call("whole_step_compile", args.shape, B, args.device, t, sync, batch) for t in compile_steps]

    emit({
        "benchmark": "compiled_fast_step",
        "method": "local",
        "shape": shape_record(args.shape, cfg, B),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "tokens_per_s": {v: B * L / s for v, s in median.items()},
        "s_per_iteration": median,
        "s_per_iteration_all": times,
        "cpu_s_per_iteration_all": cpu_times,
        "over_eager_median_ratio": ratio,
        "over_eager_cpu_median_ratio": cpu_ratio,
        "first_calls_s": first,
        "whole_step_compile_first_call_by_T": compile_time,
        "load_average": list(os.getloadavg()),
        "repeats": args.repeats,
        "machine": platform.machine(),
        "versions": library_versions(),
        "argv": sys.argv[1:],
    }, args.out)


if __name__ == "__main__":
    main()
