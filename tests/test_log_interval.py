"""Metrics reach the host only every train.log_interval iterations, and nothing else changes: the
same metrics.jsonl records for any interval; a non-finite iteration is skipped on the device and
reported at the next record by its own number, the last good checkpoint kept."""
from __future__ import annotations

import json

import numpy as np
import torch
from helpers import TINY_TOML, run_cli, tiny_cfg
from test_cli import assert_one_line_error

from ltm_ppl.run import latest_checkpoint
from ltm_ppl.inference import create


def train_records(run) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in lines if "split" not in r]


def test_records_are_the_same_for_any_log_interval(tmp_path, text_corpus):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML.replace("iters = 60", "iters = 7").replace("eval_interval = 60", "eval_interval = 100"))
    runs = {}
    for interval in (1, 3):
        runs[interval] = tmp_path / f"run{interval}"
        result = run_cli("fit", "--config", config, "--data", text_corpus, "--out", runs[interval], "--log-interval", interval, "-q")
        assert result.exit_code == 0, result.output
    assert train_records(runs[1]) == train_records(runs[3])
    assert [r["iter"] for r in train_records(runs[3])] == list(range(1, 8))
    assert "finite" not in train_records(runs[3])[0] and "grad_norm" in train_records(runs[3])[0]


def test_non_finite_iteration_is_named_at_the_next_record(tmp_path):
    explode = TINY_TOML.replace("lr = 3e-3", "lr = 1e30\nbeta1 = 0.0\nbeta2 = 0.0").replace("warmup_iters = 5", "warmup_iters = 0")
    config = tmp_path / "explode.toml"
    config.write_text(explode)
    named = {}
    for interval in (1, 7):
        run = tmp_path / f"run{interval}"
        result = run_cli("fit", "--config", config, "--out", run, "--iters", "20", "--log-interval", interval)
        assert_one_line_error(result, "non-finite loss at iteration", "(iteration 0)", after_progress=True)
        named[interval] = int(result.stderr.split("non-finite loss at iteration ")[1].split(";")[0])
        assert [r["iter"] for r in train_records(run)] == list(range(1, named[interval]))  # every record before it
        assert json.loads((latest_checkpoint(run) / "trainer_state.json").read_text())["iteration"] == 0
    assert named[1] == named[7]  # the first non-finite iteration, whenever it is found


def test_a_non_finite_step_changes_no_weight_and_no_optimiser_state():
    inference = create(tiny_cfg("local", backend="pyro"))
    batch = np.random.default_rng(0).integers(0, 64, (4, 17))
    assert bool(inference.step(batch)["finite"])  # AdamW state exists now
    weights = {k: v.clone() for k, v in inference.decoder.state_dict().items()}
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in inference.optimizer.state.items()}
    tokens = inference.tensor(batch)
    loglik, kl = inference.gaussian_elbo(tokens, torch.zeros(4, 4, 32), torch.zeros(4, 4, 32), 1)
    metrics = inference.slow_update(-loglik.sum() * float("nan"), {})
    assert not bool(metrics["finite"]) and inference.iteration == 2
    for k, v in inference.decoder.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for p, s in inference.optimizer.state.items():
        for key, value in s.items():
            assert torch.equal(value, state[id(p)][key]), key
    assert bool(inference.step(batch)["finite"])  # and training goes on from there
