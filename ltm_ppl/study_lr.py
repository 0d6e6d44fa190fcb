"""The learning rate of each model of a study (`[study] lr_grid`): each model (the LTM, each twin)
is fitted at every learning rate of the grid (runs/<id>-lr<lr>, twins under their own key), each
candidate's bound on the selection windows (Grid.selection_windows: the val windows after the
reported ones) is kept in select/<id>.json, and study.py evaluates the candidate with the lowest
one; its record carries the selection, and study.md a table of every candidate.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import load_corpus, num_windows, split_tokens
from .errors import LtmError
from .evaluate import windows_bound
from .eval_runs import open_run
from .study_grid import Grid, lr_label, twin_key, with_lr
from .study_runs import train_run, write_json

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
        write_json(done, record)
        candidates.append(record)
    chosen = choose_lr(candidates)
    return chosen, {"lr_grid": grid.lr_grid, "lr": chosen["lr"], "chosen": chosen["id"],
                    "windows": chosen["select"]["windows"], "select_nll_per_token": chosen["select"]["nll_per_token"],
                    "candidates": [{"lr": c["lr"], "id": c["id"], "select_nll_per_token": (c["select"] or {}).get("nll_per_token"),
                                    "failed": c["failed"]} for c in candidates]}


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
                         f"{c['select_nll_per_token']:.4f}" + ("*" if c["id"] == sel["chosen"] else ""))
        lines.append("| " + " | ".join(cells + [f"{sel['lr']:g}"]) + " |")
    return lines
