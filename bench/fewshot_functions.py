"""Where in-context learning can be seen on the CPU (issue 24): few-shot accuracy on
`builtin:functions` against the number of pairs shown and the latent size.

Each question of the task `builtin:functions?pairs=K` lists K pairs "x>f(x)" of a fresh random map
f (8 inputs to 8 outputs) and asks f(x) for an x that is among the K listed (K = 0: any input), so
a model that reads the prompt can answer every question with K >= 1 and chance is 1/8. The models
are trained on documents of the corpus `builtin:functions?pairs=16` (16 pairs of one map per
64-token window): an AR model (`none`) and LTMs with two latent sizes (model.n_z), everything else
equal. The in-context axis is K (pairs of the same map), not --shots (whole items of other maps,
which say nothing about this one), so --shots is 0 throughout.

Reported per run and K: greedy exact match (Wilson 95%), pass@1 and pass@5 from 5 samples
(bootstrap 95%), and the published protocol's any-of-5 substring row; per run its val bound and
the corpus' true NLL (`ltm eval`); each LTM's greedy accuracy minus the AR model's, paired over the
same questions; and the accuracy of "copy the last pair's output", the recency heuristic. Runs
already trained under --out are reused, and so is a model's record (--out/records/NAME.json), so
the models can be measured by separate invocations (--only) and tabled together.

    OMP_NUM_THREADS=1 python bench/fewshot_functions.py --out /tmp/fewshot-study \\
        --json bench/results-cpu-fewshot-functions.json --plot docs/results/fewshot_functions.png
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ltm_ppl import api
from ltm_ppl.config import RunConfig, apply_overrides
from ltm_ppl.run import Run

CORPUS = "builtin:functions?pairs=16&docs=20000"
BASE = {"model.n_layer": 2, "model.n_head": 4, "model.d_model": 64, "model.block_size": 64,
        "train.batch_size": 32, "train.eval_interval": 1000, "train.eval_windows": 32,
        "data.data": CORPUS, "data.tokenizer": "bytes"}


def models(latent_sizes: list[int]) -> dict[str, dict]:
    """name -> overrides of BASE: the AR model, then one LTM (local inference) per latent size."""
    out = {"none": {"inference.method": "none"}}
    for n_z in latent_sizes:
        out[f"ltm-nz{n_z}"] = {"inference.method": "local", "model.n_z": n_z}
    return out


def trained(run_dir: Path, overrides: dict, iters: int) -> Path:
    """The run, fitted (or finished) to `iters` iterations; reused when already there."""
    if (run_dir / "config.json").exists():
        if Run.open(run_dir).iteration >= iters:
            return run_dir
        api.fit(resume=str(run_dir), echo=lambda *_: None)
        return run_dir
    cfg = RunConfig()
    apply_overrides(cfg, {**BASE, **overrides, "train.iters": iters})
    api.fit(cfg, out=str(run_dir), echo=lambda *_: None)
    return run_dir


def measure(run_dir: Path, k: int, test: int, samples: int, jsonl: Path) -> dict:
    result = api.fewshot(str(run_dir), f"builtin:functions?pairs={k}&test={test}", shots=0, samples=samples,
                         published_protocol=True, out=str(jsonl))
    d = result.to_dict()
    return {"pairs": k, "scored": d["scored"], "unfit": d["unfit"], "rows": d["rows"]}


def bound(run_dir: Path, windows: int) -> dict:
    d = api.evaluate(str(run_dir), max_windows=windows).to_dict()
    truth = d.get("truth") or {}
    return {"nll_per_token": d["nll_per_token"], "kl_per_sequence": d.get("kl_per_sequence"),
            "windows": windows, "true_nll_per_token": truth.get("true_nll"), "true_nll_se": truth.get("true_nll_se")}


def value(rows: list[dict], protocol: str, metric: str) -> dict:
    row = next(r for r in rows if r["protocol"] == protocol and r["metric"] == metric)
    return row


def markdown(record: dict) -> str:
    lines = ["| model | val bound (true) | pairs K | greedy exact | pass@1 | pass@5 | published any-of-5 |",
             "|---|---|---|---|---|---|---|"]
    for name, entry in record["runs"].items():
        b = entry["bound"]
        head = f"{b['nll_per_token']:.3f} ({b['true_nll_per_token']:.3f})" if b["true_nll_per_token"] else f"{b['nll_per_token']:.3f}"
        for point in entry["fewshot"]:
            cells = []
            for protocol, metric in (("clean", "exact match"), ("clean", "pass@1"),
                                     ("clean", f"pass@{record['samples']}"),
                                     ("published", f"any-of-{record['samples']} substring")):
                r = value(point["rows"], protocol, metric)
                cells.append(f"{r['value']:.3f} [{r['low']:.2f}, {r['high']:.2f}]")
            lines.append(f"| {name} | {head} | {point['pairs']} | " + " | ".join(cells) + " |")
            head = ""
    if record.get("recency"):
        lines += ["", "| pairs K | copy the last pair's output | a perfect reader of the prompt |", "|---|---|---|"]
        lines += [f"| {k} | {v:.3f} | {1.0 if int(k) else 0.125:.3f} |" for k, v in record["recency"].items()]
    if record.get("paired_vs_none"):
        lines += ["", "| model - none, greedy exact, paired over the same questions | pairs K | difference | 95% interval |",
                  "|---|---|---|---|"]
        lines += [f"| {d['model']} | {d['pairs']} | {d['difference']:+.3f} | [{d['low']:+.3f}, {d['high']:+.3f}] |"
                  for d in record["paired_vs_none"]]
    return "\n".join(lines)


def _greedy(jsonl: Path) -> np.ndarray:
    """Each question's greedy verdict (1 correct) from a few-shot JSONL, in question order."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return np.array([float(r["clean"]["greedy"]["correct"]) for r in rows])


def recency(jsonl: Path) -> float:
    """Accuracy of answering with the last listed pair's output: the heuristic a model that only
    copies the most recent output would follow (right whenever the asked input was listed last,
    or its output happens to equal the last one)."""
    hits = []
    for line in jsonl.read_text().splitlines():
        r = json.loads(line)
        pairs = r["question"].split(" ")[:-1]
        hits.append(bool(pairs) and pairs[-1].split(">")[1] == r["gold"])
    return float(np.mean(hits))


def paired_vs_none(out: Path, names: list[str], pairs: list[int]) -> list[dict]:
    """Each LTM's greedy accuracy minus the AR model's on the same questions: the mean of the
    per-question differences with a 95% t interval (the questions are shared, so pairing removes
    their difficulty from the comparison)."""
    from scipy import stats
    out_rows = []
    for name in names:
        if name == "none":
            continue
        for k in pairs:
            a, b = out / "fewshot" / f"{name}-k{k}.jsonl", out / "fewshot" / f"none-k{k}.jsonl"
            if not (a.exists() and b.exists()):
                continue
            d = _greedy(a) - _greedy(b)
            se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
            half = float(stats.t.ppf(0.975, d.size - 1)) * se
            out_rows.append({"model": name, "pairs": k, "difference": float(d.mean()), "se": se,
                             "low": float(d.mean()) - half, "high": float(d.mean()) + half, "questions": int(d.size)})
    return out_rows


def plot(record: dict, path: Path) -> None:
    """Greedy accuracy against K per model, with the recency heuristic and chance for reference."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ks = [p["pairs"] for p in next(iter(record["runs"].values()))["fewshot"]]
    xs = range(len(ks))  # K as categories: 0 and powers of two
    for name, entry in record["runs"].items():
        rows = [value(p["rows"], "clean", "exact match") for p in entry["fewshot"]]
        ys = [r["value"] for r in rows]
        err = [[y - r["low"] for y, r in zip(ys, rows)], [r["high"] - y for y, r in zip(ys, rows)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
    recency = {int(k): v for k, v in (record.get("recency") or {}).items()}
    if recency:
        ax.plot(xs, [recency.get(k, float("nan")) for k in ks], color="black", linestyle="--", linewidth=1,
                label="copy the last pair's output")
    ax.axhline(1 / 8, color="grey", linestyle=":", label="chance (1/8)")
    ax.set_xticks(list(xs), [str(k) for k in ks])
    ax.set_xlabel("pairs of the asked map in the prompt (K)")
    ax.set_ylabel("greedy exact match (Wilson 95%)")
    ax.set_title("builtin:functions, CPU-sized models (a reader of the map: 1.0 at K >= 1)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder of the runs and per-question JSONL files")
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--latent-sizes", type=int, nargs="+", default=[4, 16])
    p.add_argument("--pairs", type=int, nargs="+", default=[0, 1, 2, 4, 8])
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--eval-windows", type=int, default=200)
    p.add_argument("--only", nargs="+", help="only these models (names as in the table)")
    p.add_argument("--json", help="also write the record here")
    p.add_argument("--plot", help="also write the figure here (PNG)")
    args = p.parse_args()
    out = Path(args.out)
    record = {"bench": "fewshot_functions", "corpus": CORPUS, "base": BASE, "iters": args.iters,
              "test": args.test, "samples": args.samples, "device": "cpu", "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "runs": {}}
    started = time.time()
    for name, overrides in models(args.latent_sizes).items():
        done = out / "records" / f"{name}.json"  # a model measured before (another invocation) is reused
        if done.exists():
            record["runs"][name] = json.loads(done.read_text())
            continue
        if args.only and name not in args.only:
            continue
        run_dir = trained(out / "runs" / name, overrides, args.iters)
        entry = {"overrides": overrides, "bound": bound(run_dir, args.eval_windows), "fewshot": []}
        for k in args.pairs:
            entry["fewshot"].append(measure(run_dir, k, args.test, args.samples, out / "fewshot" / f"{name}-k{k}.jsonl"))
        entry["wall_s"] = round(time.time() - started, 1)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(entry, indent=1) + "\n")
        record["runs"][name] = entry
        print(f"{name}: done ({time.time() - started:.0f} s)", flush=True)
    record["recency"] = {k: recency(out / "fewshot" / f"none-k{k}.jsonl") for k in args.pairs
                         if (out / "fewshot" / f"none-k{k}.jsonl").exists()}
    record["paired_vs_none"] = paired_vs_none(out, list(record["runs"]), args.pairs)
    record["wall_s"] = round(time.time() - started, 1)  # this invocation's (models reused cost nothing)
    print(markdown(record))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    if args.plot:
        plot(record, Path(args.plot))


if __name__ == "__main__":
    main()
