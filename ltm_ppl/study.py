"""Running a study grid (study_grid.py): each point's `ltm fit` (the library's train.fit), then its
held-out numbers as `ltm eval` computes them (eval_runs.evaluate_run): the ELBO at every test-time step
count with KL per window and active units, IWAE_K at each K, and the AR twin's exact NLL on the
same windows. One table (JSON + Markdown) and plots come out of it.

Resumable: a finished run is a file `points/<id>.json`, written atomically once its fit and
evaluation are done; a rerun skips it, resumes a run whose fit was interrupted, and evaluates one
whose fit finished. Every LTM number is an upper bound on the NLL (labelled so); the twin's is exact.

With study.lr_grid, each model (the LTM, each twin) is fitted at every learning rate of the grid
(runs/<id>-lr<lr>, twins under their own key), each candidate's bound on the selection windows
(Grid.selection_windows: the val windows after the reported ones) is kept in select/<id>.json,
and the record of points/<id>.json is the evaluation of the candidate with the lowest one.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from .data import load_corpus, num_windows, split_tokens
from .diagnostics import collapse_from_q
from .durable import atomic_write_text
from .errors import LtmError
from .evaluate import eval_batches, mean_interval, windows_bound
from .inference import training_flops_per_token
from .plots import study_plots
from .run import METRICS, Run, is_run
from .eval_runs import EvalSettings, evaluate_run, open_run
from .study_grid import Grid, Point, load_grid, lr_label, twin_configs, twin_key, with_lr
from .train import fit

# The rule for "latents in use": held-out KL >= 0.02 nats/token, and at least half of the
# latent vectors above 0.5 nats each (KL of q against the prior, averaged over windows).
IN_USE_KL_PER_TOKEN = 0.02
IN_USE_VECTOR_NATS = 0.5


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, default=float) + "\n")


def train_run(cfg, run: Path, echo) -> dict:
    """`ltm fit` of cfg into `run`, resumed if a killed study left it unfinished. Returns wall
    seconds of this call and whether it resumed."""
    start = time.perf_counter()
    resumed = False
    if is_run(run):
        opened = Run.open(run)
        if opened.iteration >= cfg.train.iters:
            return {"fit_seconds": None, "resumed": False, "reused": True}
        resumed = True
        vocab = dataclasses.replace(cfg.model, vocab_size=opened.cfg.model.vocab_size)  # what the run was given
        fit(dataclasses.replace(cfg, model=vocab), resume=str(run), progress=False, echo=echo)
    else:
        fit(cfg, out=str(run), progress=False, echo=echo)
    return {"fit_seconds": round(time.perf_counter() - start, 1), "resumed": resumed, "reused": False}


def training_curve(run: Path, cfg) -> list[dict]:
    """The periodic val evaluations of fit (metrics.jsonl): iteration, training tokens, bound or NLL."""
    curve = []
    tokens_per_iter = cfg.train.batch_size * cfg.model.block_size
    for line in (run / METRICS).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("split") == "val":
            curve.append({"iter": record["iter"], "tokens": record["iter"] * tokens_per_iter,
                          "nll_per_token": record["nll_per_token"], "kl_per_sequence": record.get("kl_per_sequence")})
    return curve


def in_use(kl_per_vector, predicted_tokens: int) -> dict:
    """The issue's rule on the KL of q per latent vector (nats, averaged over windows): held-out KL
    >= 0.02 nats/token and at least half of the vectors above 0.5 nats."""
    per_vector = np.asarray(kl_per_vector, np.float64)
    kl_window = float(per_vector.sum())
    share = float(np.mean(per_vector > IN_USE_VECTOR_NATS))
    return {"kl_per_window": kl_window, "kl_per_token": kl_window / predicted_tokens, "kl_per_latent_vector": per_vector.tolist(),
            "share_vectors_above_0.5": share,
            "latents_in_use": bool(kl_window / predicted_tokens >= IN_USE_KL_PER_TOKEN and share >= 0.5)}


def latent_use(opened, windows: int, steps: int, batch_size: int, seed: int) -> dict:
    """KL of q (fitted by `steps` fast steps) per window and per latent vector, active units and
    the issue's "in use" rule, over the first `windows` val windows."""
    cfg = opened.cfg
    tokens = split_tokens(load_corpus(cfg.data.data), "val", opened.tokenizer)
    locs, scales = [], []
    with opened.inference.rng_scope(seed):
        for batch in eval_batches(tokens, cfg.model.block_size, batch_size, windows):
            post = opened.inference.posterior(batch, steps, 1)
            locs.append(np.asarray(post["loc"]))
            scales.append(np.asarray(post["log_scale"]))
    report = collapse_from_q(np.concatenate(locs), np.concatenate(scales))
    return in_use(report["kl_per_latent_vector"], cfg.model.block_size) | {
        "active_units": report["active_units"], "num_units": report["num_units"]}


def evaluate_ltm(run: Path, grid: Grid, seed: int) -> tuple[list[dict], dict | None]:
    """Rows of one LTM run: an ELBO row per test-time T (KL per window, active units beside it) and
    an IWAE_K row per (T, K); and the corpus' exact answers on those windows (None: no law)."""
    opened = open_run(run)
    batch = grid.batch_size or opened.cfg.train.batch_size
    W = grid.eval_windows
    rows, truth = [], None
    for T in grid.eval_steps:
        rec = evaluate_run(opened, EvalSettings("val", None, [T], 1, "elbo", False, batch, W, seed), with_truth=not rows)
        truth = truth or rec.truth  # the same windows every time: computed once
        rows.append({"bound": "elbo", "steps": T, "samples": 1, "nll_per_token": rec.headline["nll_per_token"],
                     "kl_per_sequence": rec.headline["kl_per_sequence"], "num_tokens": rec.headline["num_tokens"],
                     "label": "upper bound on NLL (ELBO, analytic KL, fresh noise)"} | latent_use(opened, W, T, batch, seed))
    for T in grid.iwae_steps or grid.eval_steps:
        for K in grid.iwae_samples:
            rec = evaluate_run(opened, EvalSettings("val", None, [T], K, "iwae", False, batch, W, seed), with_truth=False)
            rows.append({"bound": "iwae", "steps": T, "samples": K, "nll_per_token": rec.headline["nll_per_token"],
                         "sampled_elbo_nll_per_token": rec.headline["sampled_elbo_nll_per_token"], "num_tokens": rec.headline["num_tokens"],
                         "label": f"upper bound on NLL (IWAE_{K})"})
    return rows, truth


def evaluate_twin(run: Path, grid: Grid, seed: int) -> tuple[list[dict], dict | None]:
    opened = open_run(run)
    rec = evaluate_run(opened, EvalSettings("val", None, None, 1, "elbo", False,
                                            grid.batch_size or opened.cfg.train.batch_size, grid.eval_windows, seed))
    return [{"bound": "exact", "steps": None, "samples": None, "nll_per_token": rec.headline["nll_per_token"],
             "num_tokens": rec.headline["num_tokens"], "label": "exact NLL (no latent)"}], rec.truth


def _describe(cfg) -> dict:
    m, t = cfg.model, cfg.train
    tokens = t.iters * t.batch_size * m.block_size
    fpt = training_flops_per_token(cfg)
    return {"d_model": m.d_model, "n_layer": m.n_layer, "n_head": m.n_head, "n_z": m.n_z if m.latent else 0,
            "block_size": m.block_size, "attention_window": m.attention_window, "iters": t.iters,
            "batch_size": t.batch_size, "train_tokens": tokens, "flops_per_token": fpt, "train_flops": fpt * tokens,
            "method": cfg.inference.method, "train_steps": cfg.inference.steps if m.latent else None,
            "init": cfg.inference.init if m.latent else None, "fast_lr": cfg.inference.fast_lr if m.latent else None}


def selection_tokens(tokens, block_size: int, windows: range) -> np.ndarray:
    """The tokens of exactly `windows` (window i is tokens[i * block : i * block + block + 1]):
    window 0 of the result is window windows.start of the split. The first token is the last one
    the window before predicts; it is only context here, so no predicted token is shared."""
    if num_windows(len(tokens), block_size) < windows.stop:
        raise LtmError(f"the learning-rate selection needs val windows {windows.start}..{windows.stop - 1} (after the "
                       f"{windows.start} reported), but the val split has {num_windows(len(tokens), block_size)} of "
                       f"{block_size} tokens; lower study.select_windows or study.eval_windows")
    return np.asarray(tokens[windows.start * block_size: windows.stop * block_size + 1])


def selection_bound(run: Path, grid: Grid, seed: int) -> dict:
    """A candidate's number on the selection windows: the LTM's ELBO (1 draw, fresh noise) at the
    largest test-time T of eval_steps, the twin's exact NLL."""
    opened = open_run(run)
    cfg = opened.cfg
    windows = grid.selection_windows()
    tokens = selection_tokens(split_tokens(load_corpus(cfg.data.data), "val", opened.tokenizer), cfg.model.block_size, windows)
    steps = max(grid.eval_steps)
    row = windows_bound(opened.inference, tokens, steps, 1, grid.batch_size or cfg.train.batch_size, len(windows),
                        seed=seed, kind="elbo")
    return {"nll_per_token": row["nll_per_token"], "num_tokens": row["num_tokens"], "steps": steps if cfg.model.latent else None,
            "windows": [windows.start, windows.stop]}


def choose_lr(candidates: list[dict]) -> dict:
    """The candidate with the lowest selection number (ties: the first in grid order); candidates
    whose fit or bound diverged (select None) are never chosen."""
    finite = [c for c in candidates if c["select"] is not None]
    if not finite:
        raise LtmError("every learning rate of study.lr_grid diverged: "
                       + "; ".join(f"{c['id']} (lr {c['lr']:g}): {c['failed']}" for c in candidates))
    return min(finite, key=lambda c: c["select"]["nll_per_token"])


def select_lr(run_id: str, cfg, kind: str, out: Path, grid: Grid, echo) -> tuple[dict, dict]:
    """Fits cfg at every lr of the grid (reusing finished candidates), bounds each on the selection
    windows, and returns (the chosen candidate, the selection record for the table)."""
    candidates = []
    for lr in grid.lr_grid:
        trial = with_lr(cfg, lr)
        cid = f"{run_id}-{lr_label(lr)}" if kind == "ltm" else twin_key(trial)
        done = out / "select" / f"{cid}.json"
        if done.exists():
            candidates.append(json.loads(done.read_text()))
            continue
        run = out / "runs" / cid
        echo(f"study: {cid}: fit ({kind}, lr {lr:g})")
        record = {"id": cid, "lr": lr, "run": str(run), "select": None, "failed": None}
        try:
            record |= train_run(trial, run, lambda s: None)
            echo(f"study: {cid}: selection bound")
            record["select"] = selection_bound(run, grid, trial.train.seed)
        except LtmError as exc:
            if "finite" not in str(exc):  # a diverged candidate is a result; anything else is an error
                raise
            record["failed"] = str(exc)
        _write_json(done, record)
        candidates.append(record)
    chosen = choose_lr(candidates)
    return chosen, {"lr_grid": grid.lr_grid, "lr": chosen["lr"], "chosen": chosen["id"],
                    "windows": chosen["select"]["windows"], "select_nll_per_token": chosen["select"]["nll_per_token"],
                    "candidates": [{"lr": c["lr"], "id": c["id"], "select_nll_per_token": (c["select"] or {}).get("nll_per_token"),
                                    "failed": c["failed"]} for c in candidates]}


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
    _write_json(done, record)
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


def selection_markdown(ltm: list[dict], twins: dict[str, dict]) -> list[str]:
    """Every candidate learning rate of every model with its selection number; * the chosen one."""
    records = []
    for rec in ltm:
        records.append((f"{rec['point']} s{rec['seed']}", "LTM", rec))
        records += [(f"{rec['point']} s{rec['seed']}", f"AR {t['twin']}", twins[t["id"]]) for t in rec["twins"] if t["id"] in twins]
    records = [r for r in records if r[2].get("lr_selection")]
    if not records:
        return []
    lrs = records[0][2]["lr_selection"]["lr_grid"]
    first = records[0][2]["lr_selection"]
    head = ["point", "model"] + [f"lr {lr:g}" for lr in lrs] + ["chosen lr"]
    lines = ["", f"Learning rate, chosen per model by its number on val windows {first['windows'][0]}..{first['windows'][1] - 1} "
             f"(the selection windows, after the reported 0..{first['windows'][0] - 1}: the LTM's ELBO at the largest T, "
             "the twin's exact NLL; * chosen, diverged: its fit or bound was not finite):",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for where, model, rec in records:
        sel = rec["lr_selection"]
        cells = [where, model]
        for c in sel["candidates"]:
            cells.append("diverged" if c["select_nll_per_token"] is None else
                         _f(c["select_nll_per_token"]) + ("*" if c["id"] == sel["chosen"] else ""))
        lines.append("| " + " | ".join(cells + [f"{sel['lr']:g}"]) + " |")
    return lines


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
    _write_json(out / "study.json", summary)
    atomic_write_text(out / "study.md", markdown(rows, grid, selection_markdown(ltm, twins)))
    return summary


def rebuild_tables(grid_path: str | Path, out: str | Path) -> dict:
    """The table and plots from the points already done (nothing is trained)."""
    out = Path(out)
    if not (out / "points").is_dir():
        raise LtmError(f"{out} holds no study (no points/ folder)")
    return write_tables(load_grid(grid_path), out)
