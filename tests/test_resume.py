"""Resume is exact and its rules are stated (issue 9): the learning-rate horizon is stored resolved
with the run, extending past it is announced, --lr-decay-iters moves it, a resume that would not
train is refused; format-1 runs keep their meaning; debris is ignored by readers and removed by fit."""
import json
import os
import shutil
import stat

import numpy as np
import pytest
from helpers import run_cli

from ltm_ppl import run as checkpoint
from ltm_ppl.config import load_toml
from ltm_ppl.train import fit

QUIET = dict(progress=False, echo=lambda s: None)


def records(run):
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_records(run):
    return [r for r in records(run) if "split" not in r and "event" not in r]


def assert_same_state(a, b):
    """Same weights and optimiser state (bit for bit) and the same metrics log."""
    where_a, where_b = checkpoint.latest_checkpoint(a), checkpoint.latest_checkpoint(b)
    for load in (checkpoint.load_weights, lambda w: checkpoint.load_optimizer(w)[0]):
        x, y = load(where_a), load(where_b)
        assert x.keys() == y.keys() and x
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    assert records(a) == records(b)


def snapshot(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture()
def tiny(tmp_path, tiny_toml):
    """`ltm fit --config tiny.toml` with extra flags; evaluations and checkpoints every 4 iterations."""
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_toml.read_text().replace("eval_interval = 60", "eval_interval = 4")
                      .replace("eval_windows = 16", "eval_windows = 4").replace("checkpoint_interval = 20", "checkpoint_interval = 4"))

    def run(*args):
        result = run_cli("fit", "--config", config, *args) if "--resume" not in args else run_cli("fit", *args)
        assert result.exit_code == 0, result.output
        return result

    return run


def test_n_iterations_equal_half_then_resume_then_half(tiny_toml, tmp_path, torch_one_thread):
    def config(iters):
        cfg = load_toml(tiny_toml)
        cfg.train.iters, cfg.train.lr_decay_iters = iters, 8
        cfg.train.checkpoint_interval, cfg.train.eval_interval, cfg.train.eval_windows = 2, 4, 8
        return cfg

    fit(config(8), out=str(tmp_path / "whole"), **QUIET)
    fit(config(4), out=str(tmp_path / "halves"), **QUIET)
    fit(config(8), resume=str(tmp_path / "halves"), **QUIET)
    assert_same_state(tmp_path / "whole", tmp_path / "halves")
    assert checkpoint.trainer_state(checkpoint.latest_checkpoint(tmp_path / "halves"))["iteration"] == 8


def test_twenty_then_twenty_is_forty_bit_for_bit(tiny, tmp_path, torch_one_thread):
    """The issue's case: straight to 40 vs 20, then resumed to 40 (horizon 40 stored at creation)."""
    tiny("--out", tmp_path / "forty", "--iters", "40")
    tiny("--out", tmp_path / "halves", "--iters", "20", "--lr-decay-iters", "40")
    tiny("--resume", tmp_path / "halves", "--iters", "40")
    assert_same_state(tmp_path / "forty", tmp_path / "halves")


def test_the_horizon_is_stored_resolved_and_extending_past_it_is_announced(tiny, tmp_path, torch_one_thread):
    run = tmp_path / "run"
    tiny("--out", run, "--iters", "8")
    record = json.loads((run / "config.json").read_text())
    assert record["format_version"] == 2 and record["config"]["train"]["lr_decay_iters"] == 8

    result = tiny("--resume", run, "--iters", "10")
    assert "notice:" in result.output and "ends at iteration 8" in result.output
    cfg = load_toml(tmp_path / "tiny.toml")
    lrs = [r["lr"] for r in train_records(run)]
    assert lrs[8:] == [cfg.train.lr * cfg.train.min_lr_ratio] * 2  # past the horizon: the minimum
    assert json.loads((run / "config.json").read_text())["config"]["train"]["lr_decay_iters"] == 8

    moved = tiny("--resume", run, "--iters", "14", "--lr-decay-iters", "20")
    assert "ends at iteration" not in moved.output  # the horizon moved: nothing past it
    assert f"notice: resuming {run} with train.lr_decay_iters = 20 (was 8)" in moved.output
    assert json.loads((run / "config.json").read_text())["config"]["train"]["lr_decay_iters"] == 20
    lrs = [r["lr"] for r in train_records(run)]
    assert all(lr > cfg.train.lr * cfg.train.min_lr_ratio for lr in lrs[10:])  # the cosine again, toward 20


def test_a_resume_that_changes_settings_says_so_and_records_it(tiny, tmp_path, torch_one_thread):
    """--iters alone changes nothing worth a notice; --batch-size and --seed are each named, old and
    new, and recorded in metrics.jsonl at the iteration the resume starts from."""
    run = tmp_path / "run"
    tiny("--out", run, "--iters", "4")
    plain = tiny("--resume", run, "--iters", "5")
    assert "notice: resuming" not in plain.output and not [r for r in records(run) if "event" in r]
    changed = tiny("--resume", run, "--iters", "6", "--batch-size", "4", "--seed", "7")
    assert f"notice: resuming {run} with train.batch_size = 4 (was 8)" in changed.output
    assert f"notice: resuming {run} with train.seed = 7 (was 0)" in changed.output
    events = [r for r in records(run) if "event" in r]
    assert events == [{"iter": 5, "event": "resume", "changed": {"train.batch_size": {"was": 8, "now": 4},
                                                                "train.seed": {"was": 0, "now": 7}}}]
    assert [r["iter"] for r in train_records(run)] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "config.json").read_text())["config"]["train"]["batch_size"] == 4


@pytest.mark.parametrize("args", [["--iters", "8"], ["--iters", "3"], []])
def test_a_resume_that_would_not_train_is_refused_and_writes_nothing(tiny, tmp_path, args, torch_one_thread):
    run = tmp_path / "run"
    tiny("--out", run, "--iters", "8")
    before = snapshot(run)
    result = run_cli("fit", "--resume", run, *args)
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [result.stderr.strip()], result.output
    assert result.stderr.startswith("error: ") and "has done 8 iterations already" in result.stderr and "N > 8" in result.stderr
    assert snapshot(run) == before


def make_format_1(run):
    """Turn a run into the layout and config of format 1 (checkpoint files on top, horizon 0)."""
    where = checkpoint.latest_checkpoint(run)
    for name in checkpoint.CHECKPOINT_FILES:
        shutil.copy(where / name, run / name)
    shutil.rmtree(run / "checkpoints")
    record = json.loads((run / "config.json").read_text())
    record["format_version"] = 1
    record["config"]["train"]["lr_decay_iters"] = 0
    (run / "config.json").write_text(json.dumps(record))


def test_format_1_runs_evaluate_and_resume_with_their_meaning(tiny, tmp_path, torch_one_thread):
    new, old = tmp_path / "new", tmp_path / "old"
    tiny("--out", new, "--iters", "4")
    shutil.copytree(new, old)
    make_format_1(old)
    evaluations = [json.loads(run_cli("eval", run, "--max-windows", "2", "--json").stdout.splitlines()[-1]) for run in (new, old)]
    assert evaluations[0]["nll_per_token"] == evaluations[1]["nll_per_token"]
    # Format 1's horizon 0 meant the --iters it was trained to (4), not the resumed one.
    tiny("--resume", new, "--iters", "6")
    tiny("--resume", old, "--iters", "6")
    assert_same_state(new, old)
    assert json.loads((old / "config.json").read_text())["format_version"] == 2  # migrated
    assert not any((old / name).exists() for name in checkpoint.CHECKPOINT_FILES)


def test_debris_is_ignored_by_eval_and_removed_by_fit(tiny, tmp_path, torch_one_thread):
    run = tmp_path / "run"
    tiny("--out", run, "--iters", "4")
    (run / "checkpoints" / "00000008.tmp").mkdir()  # a save killed before its commit
    (run / "checkpoints" / "00000008.tmp" / "weights.safetensors").write_bytes(b"torn")
    (run / ".config.json.tmp-1-ab").write_text("{")
    before = snapshot(run)
    assert run_cli("eval", run, "--max-windows", "2").exit_code == 0
    assert run_cli("sample", run, "--max-tokens", "4").exit_code == 0
    assert snapshot(run) == before
    tiny("--resume", run, "--iters", "5")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["00000005"]
    assert not (run / ".config.json.tmp-1-ab").exists()


def test_a_new_run_removes_unborn_runs_of_dead_processes(tiny, tmp_path, torch_one_thread):
    unborn = tmp_path / ".old.incomplete-999999999-abcd"  # no such process
    unborn.mkdir()
    tiny("--out", tmp_path / "run", "--iters", "1")
    assert not unborn.exists() and checkpoint.is_run(tmp_path / "run")


def test_run_files_respect_the_umask(tiny, tmp_path, torch_one_thread):
    previous = os.umask(0o027)
    try:
        tiny("--out", tmp_path / "run", "--iters", "1")
    finally:
        os.umask(previous)
    for path in [tmp_path / "run", *(tmp_path / "run").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o750 if path.is_dir() else 0o640), (path, oct(mode))


def test_a_run_without_its_tokenizer_is_called_incomplete_not_damaged(tiny, tmp_path, torch_one_thread):
    run = tmp_path / "run"
    tiny("--out", run, "--iters", "1")
    (run / "tokenizer.json").unlink()
    result = run_cli("eval", run, "--max-windows", "1")
    assert result.exit_code == 2
    assert f"error: {run} has no tokenizer.json: not a complete run" in result.output
