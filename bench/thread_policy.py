"""Seconds per training iteration of `ltm fit` under OpenMP thread settings, alone and two at once.

    python bench/thread_policy.py --shape default --backend pyro --settings passive,spin10k,active
    python bench/thread_policy.py --shape default --against 4cea5e6 --repeats 3   # this tree vs an older commit

Each measurement is one `ltm fit` subprocess (`python -m ltm_ppl`, with PYTHONPATH at the tree
being timed); seconds per iteration come from metrics.jsonl's `elapsed_s` between iteration
--skip and the last (start-up, tokenizer and jit compilation excluded; eval and checkpoints are
pushed past the end). `--pair` starts two identical fits at once and reports each one's
s/iteration over its own records. Settings are interleaved within each repeat (this machine is
noisy), the median over repeats is reported. JSON on stdout, shapes and machine stated.

libgomp (torch's OpenMP) reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, at start-up: a waiting
thread spins GOMP_SPINCOUNT times (~100k spins per ms) and then sleeps on a futex. PASSIVE
alone means 0 spins, ACTIVE 3e10, neither 3e5; GOMP_SPINCOUNT overrides all three.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {  # model and batch: the three shapes of issue 26; eval and checkpoints after the last timed iteration
    "tiny": dict(n_layer=2, n_head=2, d_model=32, n_z=4, block_size=32, batch_size=8),
    "default": dict(n_layer=2, n_head=4, d_model=64, n_z=8, block_size=256, batch_size=8),
    "wide": dict(n_layer=4, n_head=4, d_model=128, n_z=8, block_size=256, batch_size=8),
}

# name -> environment for the child (None: leave the variable unset). `default` is what `ltm fit`
# does with nothing set: whatever this tree's threads.py chooses.
SETTINGS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "gomp": {"GOMP_SPINCOUNT": "300000"},  # libgomp's own default when no policy is set
    "spin1k": {"GOMP_SPINCOUNT": "1000"},
    "spin3k": {"GOMP_SPINCOUNT": "3000"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
    "spin30k": {"GOMP_SPINCOUNT": "30000"},
    "spin100k": {"GOMP_SPINCOUNT": "100000"},
    "threads1": {"OMP_NUM_THREADS": "1"},
}
THREAD_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "XLA_FLAGS", "LTM_SPIN")


def shape_toml(shape: str, iters: int) -> str:
    s = SHAPES[shape]
    return f"""
[model]
n_layer = {s['n_layer']}
n_head = {s['n_head']}
d_model = {s['d_model']}
n_z = {s['n_z']}
block_size = {s['block_size']}

[train]
iters = {iters}
batch_size = {s['batch_size']}
eval_interval = {iters}
eval_windows = 1
checkpoint_interval = {iters}
"""


def start_fit(tree: Path, setting: str, backend: str, config: Path, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(SETTINGS[setting])
    env["PYTHONPATH"] = str(tree)
    # no -q: older commits lack it (the progress bar goes to a pipe, read at the end)
    cmd = [sys.executable, "-m", "ltm_ppl", "fit", "--config", str(config), "--backend", backend, "--out", str(out)]
    return subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


PROBE = ("import json, os; from ltm_ppl.threads import configure_threads; configure_threads(); "
         "print(json.dumps({k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}))")


def chosen_policy(tree: Path, setting: str) -> dict:
    """What the tree's threads.py chooses under `setting` right now (for `default`: the measured choice)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS} | SETTINGS[setting] | {"PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tree, env=env, capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {"probe_error": out.stderr.strip()[-200:]}


def seconds_per_iteration(run: Path, skip: int) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = {r["iter"]: r["elapsed_s"] for r in records if "elapsed_s" in r}
    last = max(times)
    return (times[last] - times[skip]) / (last - skip)


def measure(tree: Path, setting: str, backend: str, config: Path, skip: int, pair: bool, scratch: Path,
            stagger: float = 0.0) -> list[float]:
    """s/iteration of one fit, or of each of two started together (the second `stagger` s later)."""
    runs = [scratch / f"run{i}-{time.monotonic_ns()}" for i in range(2 if pair else 1)]
    procs = []
    for i, run in enumerate(runs):
        if i and stagger:
            time.sleep(stagger)
        procs.append(start_fit(tree, setting, backend, config, run))
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"error: ltm fit failed under setting {setting!r} in {tree}: {err.strip()[-400:]}")
    result = [seconds_per_iteration(run, skip) for run in runs]
    for run in runs:
        shutil.rmtree(run, ignore_errors=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="default")
    p.add_argument("--backend", choices=["pyro", "numpyro"], default="pyro")
    p.add_argument("--settings", default="default", help="comma-separated names: " + ", ".join(SETTINGS))
    p.add_argument("--pair", action="store_true", help="two identical fits at once (each one's s/iteration)")
    p.add_argument("--stagger", type=float, default=0.0, help="with --pair: start the second fit this many seconds later")
    p.add_argument("--against", metavar="REV", help="also time `default` at this older commit, interleaved")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--skip", type=int, default=20, help="iterations not timed (start-up, compilation)")
    args = p.parse_args()
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"error: unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")

    with tempfile.TemporaryDirectory(prefix="ltm-threads-") as tmp:
        scratch = Path(tmp)
        config = scratch / "shape.toml"
        config.write_text(shape_toml(args.shape, args.iters))
        trees = {"this": ROOT}
        if args.against:
            old = scratch / "old-tree"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), args.against], check=True)
            trees[args.against] = old
        entries = [(tree_name, name) for tree_name in trees for name in (names if tree_name == "this" else ["default"])]
        samples: dict[str, list[list[float]]] = {f"{t}:{n}": [] for t, n in entries}
        chosen: list[dict] = []  # this tree's choice for `default`, probed before each of its fits
        try:
            for _ in range(args.repeats):
                for tree_name, name in entries:
                    if name == "default" and tree_name == "this":
                        chosen.append(chosen_policy(trees[tree_name], name))
                    samples[f"{tree_name}:{name}"].append(measure(trees[tree_name], name, args.backend, config, args.skip, args.pair, scratch, args.stagger))
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees[args.against])], check=False)
        rows = {}
        for key, runs in samples.items():
            per_job = [statistics.median(r[i] for r in runs) for i in range(len(runs[0]))]
            rows[key] = {"s_per_iter": round(max(per_job), 4), "each_job": [round(v, 4) for v in per_job],
                         "repeats": [[round(v, 4) for v in r] for r in runs]}
        fastest = min(r["s_per_iter"] for r in rows.values())
        for r in rows.values():
            r["vs_fastest"] = round(r["s_per_iter"] / fastest, 3)
    print(json.dumps({
        "bench": "thread_policy", "shape": {"name": args.shape, **SHAPES[args.shape]}, "backend": args.backend,
        "mode": ("two at once" + (f", the second {args.stagger} s later" if args.stagger else "")) if args.pair else "alone", "iters": args.iters, "timed_from": args.skip,
        "repeats": args.repeats, "device": "cpu", "cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "settings": {n: SETTINGS[n] for n in names},
        "results": rows, "default_chose": chosen,
    }, indent=1))


if __name__ == "__main__":
    main()
