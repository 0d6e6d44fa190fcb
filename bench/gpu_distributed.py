"""Do the distributed paths start and train on a device, and what do they cost? (issue 12)

Four short `ltm fit` runs of the same shape on the built-in corpus, each in its own process:
Pyro plainly and under torchrun at world size 1 (NCCL on a GPU, gloo on a CPU, the decoder in
DistributedDataParallel), NumPyro plainly and as one jax.distributed process (coordinator on
localhost, a one-device Mesh). Prints one JSON object (also written to --out, or $OUT/
gpu_distributed.json when $OUT is set): per run the exit code, the line saying what ran, tokens/s
over the iterations after the first `--skip` (compile / jit excluded, from metrics.jsonl's
elapsed_s), and the distributed / plain ratio per backend.

    python bench/gpu_distributed.py --device cuda --shape ltm-s            # on a lent GPU machine
    python bench/gpu_distributed.py --device cpu --shape tiny --iters 6    # the CPU smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name: (n_layer, n_head, d_model, n_z, block_size, batch, fast steps)
    "tiny": (2, 2, 32, 4, 32, 8, 2),
    "small": (4, 4, 128, 8, 128, 16, 4),
    "ltm-s": (3, 8, 512, 24, 1024, 32, 16),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml(args) -> str:
    n_layer, n_head, d, n_z, block, batch, steps = SHAPES[args.shape]
    return (f"[model]\nn_layer = {n_layer}\nn_head = {n_head}\nd_model = {d}\nn_z = {n_z}\nblock_size = {block}\n\n"
            f"[inference]\nsteps = {steps}\neval_steps = {steps}\n\n"
            f"[train]\niters = {args.iters}\nbatch_size = {batch}\nwarmup_iters = 2\neval_interval = {args.iters}\n"
            f"eval_windows = {batch}\ncheckpoint_interval = {args.iters}\n\n[data]\ntokenizer = \"{args.tokenizer}\"\n")


def tokens_per_s(run: Path, skip: int, tokens_per_iter: int) -> float | None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    times = [r["elapsed_s"] for r in rows if "elapsed_s" in r and "split" not in r]
    if len(times) <= skip + 1:
        return None
    return (len(times) - 1 - skip) * tokens_per_iter / (times[-1] - times[skip])


def launch(name: str, cmd: list[str], env: dict, run: Path, args, tokens_per_iter: int) -> dict:
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    record = {"run": name, "exit_code": out.returncode, "wall_s": round(time.perf_counter() - start, 1),
              "what_ran": next((line for line in out.stdout.splitlines() if line.startswith(("pyro on ", "numpyro on "))),
                                "plain (no distributed runtime)")}
    if out.returncode == 0:
        record["tokens_per_s"] = tokens_per_s(run, args.skip, tokens_per_iter)
    else:
        record["stderr_tail"] = out.stderr[-2000:]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="ltm-s")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5, help="first iterations left out of tokens/s (compile, jit)")
    parser.add_argument("--tokenizer", default="bytes")
    parser.add_argument("--backends", default="pyro,numpyro")
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ltm-gpu-dist-"))
    config = work / "shape.toml"
    config.write_text(toml(args))
    _, _, _, _, block, batch, _ = SHAPES[args.shape]
    base_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK")}
    base_env["PYTHONPATH"] = str(ROOT) + os.pathsep + base_env.get("PYTHONPATH", "")
    fit = ["-m", "ltm_ppl", "fit", "--config", str(config), "--data", "builtin:kjv", "--device", args.device, "--quiet"]
    results = []
    for backend in args.backends.split(","):
        plain, shared = work / f"{backend}-plain", work / f"{backend}-distributed"
        flags = ["--backend", backend]
        results.append(launch(f"{backend} plain", [sys.executable, *fit, *flags, "--out", str(plain)], base_env, plain,
                              args, block * batch))
        if backend == "pyro":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *fit, *flags,
                   "--out", str(shared)]
            env = base_env
        else:
            cmd = [sys.executable, *fit, *flags, "--out", str(shared)]
            env = base_env | {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "1",
                              "JAX_PROCESS_ID": "0"}
        name = "pyro torchrun world size 1" if backend == "pyro" else "numpyro jax.distributed 1 process"
        results.append(launch(name, cmd, env, shared, args, block * batch))
        a, b = results[-2].get("tokens_per_s"), results[-1].get("tokens_per_s")
        results[-1]["ratio_to_plain"] = round(b / a, 3) if a and b else None
    report = {"device": args.device, "shape": args.shape, "iters": args.iters, "skip": args.skip,
              "tokens_per_iteration": block * batch, "runs": results}
    text = json.dumps(report, indent=1)
    print(text)
    out = args.out or (Path(os.environ["OUT"]) / "gpu_distributed.json" if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(text)
    sys.exit(0 if all(r["exit_code"] == 0 for r in results) else 1)


if __name__ == "__main__":
    main()
