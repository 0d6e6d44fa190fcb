"""Running a study grid (study_grid.py): each point's `ltm fit` and its held-out numbers as `ltm eval`
computes them (one run: study_runs.py), beside its AR twins. One table (JSON + Markdown) and plots
come out of it.

Resumable: a finished run is a file `points/<id>.json`, written atomically once its fit and
evaluation are done; a rerun skips it, resumes a run whose fit was interrupted, and evaluates one
whose fit finished. Every LTM number is an upper bound on the NLL (labelled so); the twin's is exact.

With study.lr_grid, each model (the LTM, each twin) gets its learning rate from study_lr.py, and
the record of points/<id>.json is the evaluation of the candidate it chose.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .durable import atomic_write_text
from .errors import LtmError
from .evaluate import mean_interval
from .inference import training_flops_per_token
from .plots import study_plots
from .run import Run
from .study_grid import Grid, Point, load_grid, twin_configs, twin_key
from .study_lr import select_lr, selection_markdown
from .study_runs import evaluate_ltm, evaluate_twin, train_run, training_curve, write_json


def _describe(cfg) -> dict:
    m, t = cfg.model, cfg.train
    tokens = t.iters * t.batch_size * m.block_size
    fpt = training_flops_per_token(cfg)
    return {"d_model": m.d_model, "n_layer": m.n_layer, "n_head": m.n_head, "n_z": m.n_z if m.latent else 0,
            "block_size": m.block_size, "attention_window": m.attention_window, "iters": t.iters,
            "batch_size": t.batch_size, "train_tokens": tokens, "flops_per_token": fpt, "train_flops": fpt * tokens,
            "method": cfg.inference.method, "train_steps": cfg.inference.steps if m.latent else None,
            "init": cfg.inference.init if m.latent else None, "fast_lr": cfg.inference.fast_lr if m.latent else None}


def run_one(run_id: str, cfg, kind: str, out: Path, grid: Grid, echo, extra: dict) -> dict:
    """Fit and evaluate one run unless points/<run_id>.json exists; returns its record. With an lr
    grid: the record evaluates the candidate run select_lr chose."""
    done = out / "points" / f"{run_id}.json"
    if done.exists():
        record = json.loads(done.read_text())
        if (record.get("lr_selection") or {}).get("lr_grid") != grid.lr_grid:
            raise LtmError(f"{done} was made with another study.lr_grid; give this grid its own --out")
        return record
    if grid.lr_grid:
        chosen, selection = select_lr(run_id, cfg, kind, out, grid, echo)
        run = Path(chosen["run"])
        fitted = {k: chosen[k] for k in ("fit_seconds", "resumed", "reused")}
        cfg = Run.open(run).cfg
        extra = extra | {"lr_selection": selection}
    else:
        run = out / "runs" / run_id
        echo(f"study: {run_id}: fit ({kind})")
        fitted = train_run(cfg, run, lambda s: None)
        if not fitted["reused"]:
            cfg = Run.open(run).cfg  # as fit resolved it (vocabulary, latent, horizon)
    echo(f"study: {run_id}: eval")
    start = time.perf_counter()
    rows, truth = evaluate_ltm(run, grid, cfg.train.seed) if kind == "ltm" else evaluate_twin(run, grid, cfg.train.seed)

    stored = Run.open(run).record
    record = {"id": run_id, "kind": kind, "run": str(run), "seed": cfg.train.seed, **extra, **_describe(cfg), **fitted,
              "eval_seconds": round(time.perf_counter() - start, 1), "eval_windows": grid.eval_windows,
              "curve": training_curve(run, cfg), "rows": rows, "truth": truth,
              "versions": stored.get("versions"), "git_revision": stored.get("git_revision"),
              "config": cfg.to_dict()}
    write_json(done, record)
    return record


def run_study(grid_path: str | Path, out: str | Path, only: list[str] | None = None, echo=print) -> dict:
    """Run (or resume) the grid into `out`; writes study.json, study.md and plots there."""
    grid = load_grid(grid_path)
    names = [p.name for p in grid.points]
    for name in only or []:
        if name not in names:
            raise LtmError(f"--only {name}: no such point (points: {', '.join(names)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    atomic_write_text(out / "grid.toml", Path(grid_path).read_text())  # what produced the table
    for point in grid.points:
        if only and point.name not in only:
            continue
        for seed in point.seeds:
            cfg = grid.config(point, seed)
            for twin in point_twins(grid, point, seed):
                run_one(twin["id"], twin["cfg"], "ar", out, grid, echo, {"twin_of": point.name, "twin": twin["twin"]})
            run_one(f"{point.name}-s{seed}", cfg, "ltm", out, grid, echo, {"point": point.name, "settings": point.settings})
    return write_tables(grid, out)


def point_twins(grid: Grid, point: Point, seed: int) -> list[dict]:
    """The AR twins the grid asks for beside a point: [{"id", "twin" (label), "cfg"}]."""
    if not grid.twins:
        return []
    # With an lr grid the twin's record (its chosen candidate's evaluation) gets an id of its own:
    # its candidates' runs are named by twin_key at their lr, and one of them may be the config's.
    suffix = "-lrgrid" if grid.lr_grid else ""
    return [{"id": twin_key(cfg) + suffix, "twin": label, "cfg": cfg}
            for label, cfg in twin_configs(grid.config(point, seed), grid.flops_twins)]


def collect(grid: Grid, out: Path) -> tuple[list[dict], dict[str, dict]]:
    """(LTM records of the grid's points in grid order, {twin id: twin record}) found in out/points."""
    ltm, twins = [], {}
    for point in grid.points:
        for seed in point.seeds:
            path = out / "points" / f"{point.name}-s{seed}.json"
            if not path.exists():
                continue
            record = json.loads(path.read_text())
            record["twins"] = [{"id": t["id"], "twin": t["twin"]} for t in point_twins(grid, point, seed)]
            ltm.append(record)
            for t in record["twins"]:
                tpath = out / "points" / f"{t['id']}.json"
                if tpath.exists():
                    twins[t["id"]] = json.loads(tpath.read_text())
    return ltm, twins


def table_rows(ltm: list[dict], twins: dict[str, dict]) -> list[dict]:
    """One row per (point, seed, test-time T): the ELBO with KL and active units, IWAE_K at each K
    where measured, the AR twins' exact NLL and the LTM's margin over the same-window twin."""
    rows = []
    for rec in ltm:
        same = next((twins[t["id"]] for t in rec["twins"] if t["twin"] == "same window" and t["id"] in twins), None)
        full = next((twins[t["id"]] for t in rec["twins"] if t["twin"] == "full attention" and t["id"] in twins), None)
        flops = next((twins[t["id"]] for t in rec["twins"] if t["twin"] == "equal FLOPs" and t["id"] in twins), None)
        ar = same["rows"][0]["nll_per_token"] if same else None
        truth = rec.get("truth") or {}  # points done before the truth was recorded: none
        for r in rec["rows"]:
            if r["bound"] != "elbo":
                continue
            iwae = {f"iwae_{x['samples']}": x["nll_per_token"] for x in rec["rows"]
                    if x["bound"] == "iwae" and x["steps"] == r["steps"]}
            best = min([r["nll_per_token"], *iwae.values()])
            rows.append({
                "point": rec["point"], "settings": rec["settings"], "seed": rec["seed"], "train_tokens": rec["train_tokens"],
                "train_flops": rec["train_flops"], "fit_seconds": rec["fit_seconds"], "fit_resumed": rec.get("resumed", False), "eval_steps": r["steps"],
                "elbo": r["nll_per_token"], **iwae, "best_bound": best,
                "kl_per_window": r["kl_per_window"], "kl_per_token": r["kl_per_token"],
                "share_vectors_above_0.5": r["share_vectors_above_0.5"], "active_units": r["active_units"],
                "num_units": r["num_units"], "latents_in_use": r["latents_in_use"],
                "ar_nll": ar, "ar_full_attention_nll": full["rows"][0]["nll_per_token"] if full else None,
                "ar_train_flops": same["train_flops"] if same else None,
                "ar_equal_flops_nll": flops["rows"][0]["nll_per_token"] if flops else None,
                "ar_equal_flops_tokens": flops["train_tokens"] if flops else None,
                "margin_vs_ar": None if ar is None else best - ar,  # < 0: the LTM's bound beats the twin
                "true_nll": truth.get("true_nll"), "best_window_nll": truth.get("best_window_nll"),
            })
            if rec.get("lr_selection"):  # an lr grid: each model's chosen lr and its selection number
                rows[-1] |= {"lr": rec["lr_selection"]["lr"], "select_nll": rec["lr_selection"]["select_nll_per_token"],
                             "ar_lr": same["lr_selection"]["lr"] if same else None,
                             "ar_select_nll": same["lr_selection"]["select_nll_per_token"] if same else None}
    return rows


def seed_statistics(rows: list[dict]) -> list[dict]:
    """Per (point, test-time T), over its seeds: the mean of the best bound, of the same-window
    twin's NLL and of the margin (best bound - twin, paired by seed: each seed has its own twin),
    each with its standard error sd / sqrt(seeds); the margin's 95% t interval, and whether it
    excludes 0 (resolved). One seed: no se, no interval, not resolved (evaluate.mean_interval)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["point"], r["eval_steps"]), []).append(r)
    out = []
    for (point, T), rs in groups.items():
        best = mean_interval([r["best_bound"] for r in rs])
        ar = mean_interval([r["ar_nll"] for r in rs if r["ar_nll"] is not None])
        margin = mean_interval([r["margin_vs_ar"] for r in rs if r["margin_vs_ar"] is not None])
        out.append({"point": point, "settings": rs[0]["settings"], "eval_steps": T, "seeds": [r["seed"] for r in rs],
                    "best_bound_mean": best["mean"], "best_bound_se": best["se"],
                    "ar_nll_mean": ar["mean"], "ar_nll_se": ar["se"],
                    "margin_mean": margin["mean"], "margin_se": margin["se"], "margin_ci_low": margin["ci_low"],
                    "margin_ci_high": margin["ci_high"], "margin_seeds": margin["n"], "margin_resolved": margin["resolved"]})
    return out


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in settings.items()) or "(base)"


def _f(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pm(mean, se) -> str:
    return "-" if mean is None else _f(mean) + ("" if se is None else f" ± {se:.4f}")


def seed_markdown(stats: list[dict]) -> list[str]:
    """The across-seeds table under the per-seed one."""
    head = ["point", "T eval", "seeds", "best bound (mean ± se)", "AR twin (mean ± se)", "best bound - AR (mean ± se)",
            "95% interval", "margin"]
    lines = ["", "Across seeds (mean ± standard error over seeds; the margin paired by seed, each seed against its own twin):",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in stats:
        if s["margin_ci_low"] is None:
            interval, verdict = "-", "one seed: not resolved" if s["margin_seeds"] == 1 else "-"
        else:
            interval = f"[{s['margin_ci_low']:+.4f}, {s['margin_ci_high']:+.4f}]"
            verdict = "resolved" if s["margin_resolved"] else "not resolved"
        lines.append("| " + " | ".join([f"{s['point']}: {_settings_text(s['settings'])}", str(s["eval_steps"]),
                                        str(len(s["seeds"])), _pm(s["best_bound_mean"], s["best_bound_se"]),
                                        _pm(s["ar_nll_mean"], s["ar_nll_se"]), _pm(s["margin_mean"], s["margin_se"]),
                                        interval, verdict]) + " |")
    lines += ["", "95% interval: mean ± t(0.975, seeds - 1) · se; not resolved: it covers 0, so these seeds do not "
              "say whether the LTM's bound is below or above its twin."]
    return lines


def markdown(rows: list[dict], grid: Grid, selection: list[str] | None = None) -> str:
    Ks = sorted({int(k.split("_")[1]) for r in rows for k in r if k.startswith("iwae_")})
    full = any(r["ar_full_attention_nll"] is not None for r in rows)
    truth = any(r.get("true_nll") is not None for r in rows)
    flops = any(r["ar_equal_flops_nll"] is not None for r in rows)
    head = (["point", "seed", "T eval", "ELBO"] + [f"IWAE_{k}" for k in Ks] +
            ["AR twin (exact)"] + (["AR full attention (exact)"] if full else []) +
            (["AR equal FLOPs (exact)"] if flops else []) +
            (["true NLL", "best window AR (floor)"] if truth else []) + ["best bound - AR", "KL/window", "KL/token", "vectors > 0.5", "active units",
             "in use", "fit s", "train tokens", "train FLOPs LTM / AR"])
    lines = ["Every LTM number is an upper bound on the held-out NLL in nats/token (ELBO: analytic KL, fresh noise; "
             "IWAE_K: K draws of q); the AR twin's number is its exact NLL on the same windows.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['point']}: {_settings_text(r['settings'])}", str(r["seed"]), str(r["eval_steps"]), _f(r["elbo"])]
        cells += [_f(r.get(f"iwae_{k}")) for k in Ks]
        cells += [_f(r["ar_nll"])] + ([_f(r["ar_full_attention_nll"])] if full else [])
        cells += [_f(r["ar_equal_flops_nll"])] if flops else []
        cells += [_f(r.get("true_nll")), _f(r.get("best_window_nll"))] if truth else []
        cells += [_f(r["margin_vs_ar"], 3), _f(r["kl_per_window"], 2), _f(r["kl_per_token"], 4),
                  f"{r['share_vectors_above_0.5']:.2f}", f"{r['active_units']}/{r['num_units']}",
                  "yes" if r["latents_in_use"] else "no", _f(r["fit_seconds"], 0) + ("*" if r["fit_resumed"] else ""), str(r["train_tokens"]),
                  "-" if not r["ar_train_flops"] else f"{r['train_flops'] / r['ar_train_flops']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "best bound - AR: the row's lowest bound minus the same-window AR twin's exact NLL (< 0: the LTM's "
              "bound beats the twin at equal training tokens). KL/window: analytic KL(q || prior) of q fitted by T steps, "
              "mean over windows; vectors > 0.5: share of latent vectors with KL above 0.5 nats; in use: KL >= 0.02 "
              "nats/token and that share >= 0.5. fit s: wall seconds of `ltm fit` in this study (* resumed: the part after the resume)."]
    if truth:
        lines += ["", "true NLL: the corpus' exact NLL of the same windows; best window AR: the lowest NLL of a model "
                  "seeing the LTM's receptive field (data/truth.py). Neither is a bound."]
    return "\n".join(lines + (selection or []) + seed_markdown(seed_statistics(rows))) + "\n"


def write_tables(grid: Grid, out: Path) -> dict:
    """study.json (records and table rows), study.md and the plots, from what out/points holds."""
    ltm, twins = collect(grid, out)
    rows = table_rows(ltm, twins)
    summary = {"out": str(out), "points_done": len(ltm), "points_total": sum(len(p.seeds) for p in grid.points),
               "rows": rows, "seed_statistics": seed_statistics(rows), "twins": list(twins.values()), "ltm": ltm}
    summary["plots"] = study_plots(ltm, twins, rows, out) if ltm else []
    write_json(out / "study.json", summary)
    atomic_write_text(out / "study.md", markdown(rows, grid, selection_markdown(ltm, twins)))
    return summary


def rebuild_tables(grid_path: str | Path, out: str | Path) -> dict:
    """The table and plots from the points already done (nothing is trained)."""
    out = Path(out)
    if not (out / "points").is_dir():
        raise LtmError(f"{out} holds no study (no points/ folder)")
    return write_tables(load_grid(grid_path), out)
