"""One run of a study (study.py): its `ltm fit` (the library's train.fit), resumed if a killed study
left it unfinished, and its held-out numbers as `ltm eval` computes them (eval_runs.evaluate_run):
the LTM's ELBO at every test-time step count with KL per window and active units, IWAE_K at each
K; the AR twin's exact NLL on the same windows; the training curve fit recorded.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from .data import load_corpus, split_tokens
from .diagnostics import collapse_from_q
from .durable import atomic_write_text
from .evaluate import eval_batches
from .eval_runs import EvalSettings, evaluate_run, open_run
from .run import METRICS, Run, is_run
from .study_grid import Grid
from .train import fit

from .train import fit

# The rule for "latents in use": held-out KL >= 0.02 nats/token, and at least half of the
# latent vectors above 0.5 nats each (KL of q against the prior, averaged over windows).
IN_USE_KL_PER_TOKEN = 0.02
IN_USE_VECTOR_NATS = 0.5


def write_json(path: Path, record: dict) -> None:
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
