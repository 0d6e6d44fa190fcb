"""`ltm fit --tensorboard DIR`: the scalars of metrics.jsonl as TensorBoard events (tensorboard_events.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_cli

from ltm_ppl import tensorboard_events


def _read_back(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _expected(run) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl's numbers, as float32 (TensorBoard's simple_value)."""
    out: dict[str, list] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        for tag, value in tensorboard_events.tags(json.loads(line)).items():
            out.setdefault(tag, []).append((json.loads(line)["iter"], float(np.float32(value))))
    return out


def test_tags_are_the_records_numbers():
    assert tensorboard_events.tags({"iter": 3, "loss": 2.5, "lr": 1e-3}) == {"train/loss": 2.5, "train/lr": 1e-3}
    assert tensorboard_events.tags({"iter": 5, "split": "val", "bound": "elbo", "nll_per_token": 3.0, "num_tokens": 512}) \
        == {"val/nll_per_token": 3.0, "val/num_tokens": 512.0}
    assert tensorboard_events.tags({"iter": 5, "event": "resume", "changed": {}}) == {}


def test_fit_and_resume_write_the_metrics_as_events(tmp_path, tiny_toml):
    pytest.importorskip("tensorboard")
    run, board = tmp_path / "tiny", tmp_path / "tb"
    result = run_cli("fit", "--config", tiny_toml, "--out", run, "--iters", "6", "--batch-size", "4", "--log-interval", "2",
                     "--tensorboard", board, "-q")
    assert result.exit_code == 0, result.output
    result = run_cli("fit", "--resume", run, "--iters", "10", "--batch-size", "8", "--tensorboard", board, "-q")
    assert result.exit_code == 0, result.output
    expected = _expected(run)
    assert {"train/loss", "train/kl", "train/lr", "train/grad_norm", "val/nll_per_token", "val/kl_per_sequence"} <= set(expected)
    assert [step for step, _ in expected["train/loss"]] == list(range(1, 11))
    assert _read_back(board / "tiny") == expected


def test_a_killed_runs_points_after_its_checkpoint_are_dropped_on_resume(tmp_path):
    """As metrics.jsonl is truncated to the checkpoint a resume starts from, the events past it are
    purged (a SessionLog START at the resume's iteration)."""
    pytest.importorskip("tensorboard")
    first = tensorboard_events.EventWriter(tmp_path, start=0)
    for it in range(1, 9):  # logged up to 8, checkpoint at 6, then killed
        first.add({"iter": it, "loss": float(it)})
    first.close()
    second = tensorboard_events.EventWriter(tmp_path, start=6)
    for it in range(7, 11):
        second.add({"iter": it, "loss": 100.0 + it})
    second.close()
    assert _read_back(tmp_path)["train/loss"] == [(i, float(i)) for i in range(1, 7)] + [(i, 100.0 + i) for i in range(7, 11)]


def test_bad_tensorboard_folder_or_missing_extra_is_one_line_before_work(tmp_path, tiny_toml, monkeypatch):
    (tmp_path / "file").write_text("x")
    result = run_cli("fit", "--config", tiny_toml, "--out", tmp_path / "r", "--tensorboard", tmp_path / "file" / "tb")
    assert result.exit_code == 2 and "cannot create the TensorBoard folder" in result.output and not (tmp_path / "r").exists()
    monkeypatch.setattr(tensorboard_events.importlib.util, "find_spec", lambda name: None)
    result = run_cli("fit", "--config", tiny_toml, "--out", tmp_path / "r", "--tensorboard", tmp_path / "tb")
    assert result.exit_code == 2 and "pip install 'ltm-ppl[tensorboard]'" in result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "r").exists() and not (tmp_path / "tb").exists()
