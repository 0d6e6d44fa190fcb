"""Convergence table of the langevin kernels on the pinned run (issue 13): for each kernel x start,
`ltm diagnose` on 8 held-out windows, and one JSON row per pair with R-hat max / median, bulk ESS
min, the verdict of the convergence rule (diagnostics.CONVERGENCE_RULE), gradient evaluations per
chain and sequence, and wall seconds. Each pair runs in its own process (nice'd: the machine may
be shared).

    python bench/posterior_quality.py --train runs/posterior-quality      # fit the pinned TOML first
    python bench/posterior_quality.py --run runs/posterior-quality --out bench/results-posterior-quality.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
PINNED = HERE / "posterior_quality.toml"
KERNELS = {"mala": ["--kernel", "mala", "--target-accept", "0.57"],
           "hmc": ["--kernel", "hmc", "--target-accept", "0.8"],
           "nuts": ["--kernel", "nuts", "--target-accept", "0.8"]}
STARTS = {"prior": ["--init", "prior"], "local": ["--init", "local"]}


def ltm(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["nice", sys.executable, "-m", "ltm_ppl", *args], capture_output=True, text=True, timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a run trained from posterior_quality.toml")
    parser.add_argument("--train", help="train the pinned TOML into this new run first")
    parser.add_argument("--kernels", default="mala,hmc,nuts")
    parser.add_argument("--starts", default="prior,local")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--local-steps", type=int, default=16, help="fast steps of the local start")
    parser.add_argument("--leapfrog-steps", type=int, default=8, help="of HMC")
    parser.add_argument("--max-tree-depth", type=int, default=10, help="of NUTS")
    parser.add_argument("--backend", default="numpyro", help="numpyro runs all three kernels (pyro: no nuts)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per kernel x start pair (a row says it ran out)")
    parser.add_argument("--bounds", action="store_true", help="also the ELBO / IWAE_16 of the fitted Gaussian (runs the chains twice more)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    run = args.run
    if args.train:
        done = ltm("fit", "--config", str(PINNED), "--out", args.train)
        if done.returncode != 0:
            sys.exit(done.stderr)
        run = args.train
    if not run:
        sys.exit("give --run RUN or --train NEW_RUN")
    rows = []
    for kernel, start in itertools.product(args.kernels.split(","), args.starts.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            cpu_began = resource.getrusage(resource.RUSAGE_CHILDREN)
            try:
                done = ltm("diagnose", run, "--inference", "langevin", "--backend", args.backend, *KERNELS[kernel],
                           *STARTS[start], "--leapfrog-steps", str(args.leapfrog_steps),
                           "--max-tree-depth", str(args.max_tree_depth), "--steps", str(args.local_steps),
                           "--warmup", str(args.warmup), "--sequences", str(args.sequences), "--chains", str(args.chains),
                           "--draws", str(args.draws), "--bounds" if args.bounds else "--no-bounds",
                           "--out", str(Path(tmp) / "d"), "--json", timeout=args.timeout)
            except subprocess.TimeoutExpired:
                done = None
            seconds = time.perf_counter() - began
            # the diagnose process's CPU time: on a shared machine, steadier than wall time
            cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_seconds = cpu.ru_utime + cpu.ru_stime - cpu_began.ru_utime - cpu_began.ru_stime
        row = {"kernel": kernel, "start": start, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
               "warmup": args.warmup, "draws": args.draws,
               "leapfrog_steps": args.leapfrog_steps if kernel == "hmc" else None}
        if kernel == "nuts":
            row["max_tree_depth"] = args.max_tree_depth
        if done is None:
            rows.append(row | {"error": f"did not finish within --timeout {args.timeout:g} s", "converged": False})
        elif done.returncode != 0:
            rows.append(row | {"error": done.stderr.strip().splitlines()[-1:]})
        else:
            r = json.loads(done.stdout.strip().splitlines()[-1])["methods"]["langevin"]
            c = r["chains_diagnostics"]
            rows.append(row | {"rhat_max": c["rhat_max"], "rhat_median": c["rhat_median"], "ess_bulk_min": c["ess_bulk_min"],
                               "ess_bulk_median": c.get("ess_bulk_median"), "ess_bulk_log_joint_min": c["ess_bulk_log_joint_min"],
                               "rhat_log_joint_max": c["rhat_log_joint_max"], "converged": c["converged"],
                               "share_coordinates_converged_min": min(c["share_coordinates_converged"]),
                               "gradient_evaluations": r["gradient_evaluations"], "accept_prob": r["accept_prob"],
                               "divergences": r.get("divergences"), "step_size": r.get("step_size")}
                       | {k: r[k] for k in ("tree_depth_mean", "tree_depth_max") if k in r}
                       | ({"bounds": r["bounds"]} if "bounds" in r else {}))
        print(json.dumps(rows[-1]), flush=True)
    table = {"run": str(run), "config": str(PINNED), "backend": args.backend, "sequences": args.sequences,
             "leapfrog_steps": args.leapfrog_steps,
             "chains": args.chains, "draws": args.draws, "warmup": args.warmup, "local_steps": args.local_steps,
             "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=2) + "\n")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
