"""Per-window numbers under several torch workers (issue 22): each worker scores its contiguous share
of every global batch, and corpus_bound gathers the shares back into window order, so `compare`'s
paired difference is one worker's. A fast check with simulated workers (the collective replaced by
a sum of what each rank contributes), and a slow one through torchrun with two CPU workers."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

from ltm_ppl import evaluate
from ltm_ppl.distributed import World


class WindowSum:
    """An Inference double whose bound of a window is a function of its tokens alone: -sum / 100."""

    noise_rows = None

    @contextlib.contextmanager
    def rng_scope(self, seed):
        yield

    def bound(self, batch, steps, num_samples):
        batch = np.asarray(batch, np.float64)
        return {"loglik": -batch.sum(1) / 100.0, "kl": np.zeros(len(batch))}


def batches(windows: int, batch_size: int, block: int = 5):
    tokens = np.random.default_rng(0).integers(0, 50, size=(windows, block + 1))
    return [tokens[i:i + batch_size] for i in range(0, windows, batch_size)]


def simulated_workers(monkeypatch, size: int, windows: int, batch_size: int) -> list[float]:
    """corpus_bound(per_window=True) on each of `size` simulated torch workers; the collective is
    the sum over ranks of what each passed (run rank by rank, then summed by hand)."""
    contributions = []

    def keep(values):
        contributions.append(np.asarray(values, np.float64))
        return values

    monkeypatch.setattr(evaluate, "_sum_over_workers", keep)
    per_rank = []
    for rank in range(size):
        monkeypatch.setattr(evaluate, "world", lambda rank=rank: World(rank=rank, size=size, runtime="torch"))
        contributions.clear()
        evaluate.corpus_bound(WindowSum(), batches(windows, batch_size), 1, 1, per_window=True)
        per_rank.append(contributions[-1])  # the last collective is the windows' vector
    return np.sum(per_rank, axis=0).tolist()


@pytest.mark.parametrize("size,windows,batch_size", [(2, 10, 4), (3, 7, 4), (2, 5, 8)])
def test_gathered_windows_are_in_one_workers_order(monkeypatch, size, windows, batch_size):
    """Shares of 4-row batches with a short last batch (10 = 4 + 4 + 2; 7 on 3 workers leaves one
    empty share; 5 in one batch of 8): the gathered vector is the one-worker vector, entry for entry."""
    alone = evaluate.corpus_bound(WindowSum(), batches(windows, batch_size), 1, 1, per_window=True)["window_nll"]
    gathered = simulated_workers(monkeypatch, size, windows, batch_size)
    assert len(gathered) == windows
    assert gathered == alone  # the other workers add exact zeros


@pytest.mark.slow
def test_compare_paired_on_two_workers_equals_one(tmp_path):
    """Two different tiny runs (an LTM and its AR twin, 3 iterations each); `ltm compare` on one
    worker and under torchrun with two: the same paired mean, se and interval (float32 sums)."""
    from helpers import TINY_TOML
    from test_distributed import ltm, torchrun

    toml = tmp_path / "tiny.toml"
    toml.write_text(TINY_TOML.replace("iters = 60", "iters = 3").replace("eval_interval = 60", "eval_interval = 3"))
    runs = []
    for name, extra in (("ltm", ()), ("ar", ("--inference", "none"))):
        out = ltm("fit", "--config", toml, "--data", "builtin:kjv", "--out", tmp_path / name, "--quiet", *extra)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(tmp_path / name)
    args = ("compare", *runs, "--max-windows", 10, "--batch-size", 4, "--json", "--quiet")
    alone, shared = ltm(*args), torchrun(*args)
    assert alone.returncode == 0 and shared.returncode == 0, shared.stderr[-3000:]
    a, b = json.loads(alone.stdout)["rows"][1]["paired"], json.loads(shared.stdout)["rows"][1]["paired"]
    assert a is not None and b is not None
    assert b["windows"] == a["windows"] == 10
    for key in ("nats_per_token", "se", "ci_low", "ci_high"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert b["resolved"] == a["resolved"]
