"""Seed-to-seed spread of a study's points (docs/results.md): for every point run with several seeds,
the mean and sample standard deviation over seeds of its best bound, its AR twin's exact NLL and
their difference (the margin; negative = the LTM wins), at one test-time T.

    python bench/study/seed_spread.py STUDY/study.json [--steps 16]
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("study")
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    rows = [r for r in json.loads(Path(args.study).read_text())["rows"] if r["eval_steps"] == args.steps]
    by_point = defaultdict(list)
    for r in rows:
        by_point[r["point"]].append(r)
    print("| point | seeds | best bound (LTM, upper bound) | AR twin (exact) | margin: bound - AR | KL/window | margins per seed |")
    print("|---|---|---|---|---|---|---|")
    for point, runs in by_point.items():
        if len(runs) < 2:
            continue
        runs.sort(key=lambda r: r["seed"])
        best = [r["best_bound"] for r in runs]
        ar = [r["ar_nll"] for r in runs]
        margin = [r["margin_vs_ar"] for r in runs]
        kl = [r["kl_per_window"] for r in runs]
        print(f"| {point} | {', '.join(str(r['seed']) for r in runs)} | {spread(best)} | {spread(ar)} | "
              f"{spread(margin)} | {spread(kl)} | {', '.join(f'{m:+.3f}' for m in margin)} |")


if __name__ == "__main__":
    main()
