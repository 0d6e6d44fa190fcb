"""`ltm study` with study.lr_grid (issue 22): each model (the LTM, its AR twin) is fitted at every
learning rate of the grid and its lr chosen by its own number on the selection windows, which are
the val windows after the reported ones; the table reports the chosen runs. A tiny grid: one point,
one seed, three learning rates, 4 iterations (6 fits)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ltm_ppl import study_lr as study_module
from ltm_ppl.data import load_corpus, split_tokens
from ltm_ppl.data.windows import windows
from ltm_ppl.errors import LtmError
from ltm_ppl.eval_runs import EvalSettings, evaluate_run, open_run
from ltm_ppl.study import run_study
from ltm_ppl.study_grid import load_grid, twin_configs, twin_key, with_lr
from ltm_ppl.study_lr import choose_lr, selection_tokens

LRS = [3e-4, 3e-3, 1e-2]
EVAL_WINDOWS, SELECT_WINDOWS = 4, 3

GRID = f"""
[study]
seeds = [0]
eval_steps = [2]
iwae_samples = [1]
eval_windows = {EVAL_WINDOWS}
lr_grid = {LRS}
select_windows = {SELECT_WINDOWS}

[base.model]
n_layer = 1
n_head = 2
d_model = 32
n_z = 4
block_size = 32

[base.inference]
steps = 2
eval_steps = 2

[base.train]
iters = 4
batch_size = 4
warmup_iters = 1
eval_interval = 4
eval_windows = 4
checkpoint_interval = 4

[base.data]
tokenizer = "bytes"

[[point]]
name = "base"
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The real study, with every tokens array the selection bound was given captured."""
    root = tmp_path_factory.mktemp("study_lr")
    (root / "grid.toml").write_text(GRID)
    seen = []
    real = study_module.windows_bound

    def capture(inference, tokens, steps, samples, batch_size, max_windows, **kw):
        seen.append((np.asarray(tokens).copy(), max_windows))
        return real(inference, tokens, steps, samples, batch_size, max_windows, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(study_module, "windows_bound", capture)
        summary = run_study(root / "grid.toml", root / "out", echo=lambda s: None)
    return root, summary, seen


def twin_id(grid, lr=None):
    cfg = grid.config(grid.points[0], 0)
    return twin_key(twin_configs(with_lr(cfg, lr) if lr else cfg)[0][1])


def test_every_model_is_fitted_at_every_lr_and_reports_its_chosen_run(study):
    root, summary, seen = study
    out = root / "out"
    grid = load_grid(root / "grid.toml")
    assert len(seen) == 2 * len(LRS)  # one selection bound per (model, lr)
    (ltm,) = summary["ltm"]
    (twin,) = summary["twins"]
    for rec, ids in ((ltm, [f"base-s0-lr{lr:g}" for lr in LRS]), (twin, [twin_id(grid, lr) for lr in LRS])):
        sel = rec["lr_selection"]
        assert [c["id"] for c in sel["candidates"]] == ids and [c["lr"] for c in sel["candidates"]] == LRS
        numbers = [c["select_nll_per_token"] for c in sel["candidates"]]
        assert sel["lr"] == LRS[int(np.argmin(numbers))] and sel["select_nll_per_token"] == min(numbers)
        assert rec["run"] == str(out / "runs" / sel["chosen"])
        assert rec["config"]["train"]["lr"] == sel["lr"]
        assert sel["windows"] == [EVAL_WINDOWS, EVAL_WINDOWS + SELECT_WINDOWS]
    assert twin["id"] == twin_id(grid) + "-lrgrid"  # its own record, never a candidate's name
    row = summary["rows"][0]
    assert row["lr"] == ltm["lr_selection"]["lr"] and row["ar_lr"] == twin["lr_selection"]["lr"]
    assert row["select_nll"] == ltm["lr_selection"]["select_nll_per_token"]
    # the reported numbers are `ltm eval` of the chosen runs on the first eval_windows windows
    got = evaluate_run(open_run(twin["run"]), EvalSettings("val", None, None, 1, "elbo", False, None, EVAL_WINDOWS, 0))
    assert row["ar_nll"] == pytest.approx(got.headline["nll_per_token"], rel=1e-6)
    got = evaluate_run(open_run(ltm["run"]), EvalSettings("val", None, [2], 1, "elbo", False, None, EVAL_WINDOWS, 0))
    assert row["elbo"] == pytest.approx(got.headline["nll_per_token"], rel=1e-6)
    text = (out / "study.md").read_text()
    assert "Learning rate, chosen per model" in text and f"val windows {EVAL_WINDOWS}..{EVAL_WINDOWS + SELECT_WINDOWS - 1}" in text
    assert text.count("*") >= 2


def test_selection_windows_are_disjoint_from_the_reported_ones(study):
    root, _, seen = study
    grid = load_grid(root / "grid.toml")
    assert grid.selection_windows() == range(EVAL_WINDOWS, EVAL_WINDOWS + SELECT_WINDOWS)
    assert set(grid.selection_windows()).isdisjoint(range(grid.eval_windows))
    from ltm_ppl.data import build_tokenizer
    tokens = split_tokens(load_corpus(grid.config(grid.points[0], 0).data.data), "val", build_tokenizer("bytes"))
    reported = windows(tokens, range(EVAL_WINDOWS), 32)
    wanted = windows(tokens, grid.selection_windows(), 32)
    for given, max_windows in seen:
        assert max_windows == SELECT_WINDOWS
        chosen = windows(given, range(SELECT_WINDOWS), 32)
        np.testing.assert_array_equal(chosen, wanted)  # exactly the selection windows ...
        # ... whose predicted tokens (positions 1..32 of each) start after the reported ones end
        np.testing.assert_array_equal(given, np.asarray(tokens[EVAL_WINDOWS * 32: (EVAL_WINDOWS + SELECT_WINDOWS) * 32 + 1]))
        assert not any((w == r).all() for w in chosen for r in reported)


def test_selection_needs_enough_val_windows():
    tokens = np.arange(10 * 32 + 1)
    assert selection_tokens(tokens, 32, range(4, 10))[0] == 4 * 32
    with pytest.raises(LtmError, match="val windows 4..10"):
        selection_tokens(tokens, 32, range(4, 11))


def test_rigged_selection_picks_the_lowest_number_per_model(study, tmp_path):
    """The fitted candidates copied into a fresh study whose selection numbers are rigged: the LTM's
    lowest at 1e-2, the twin's at 3e-4. Each model gets its own, and the reported rows are the
    chosen runs' (nothing is fitted again)."""
    root, _, _ = study
    shutil.copytree(root / "out" / "runs", tmp_path / "out" / "runs")
    grid = load_grid(root / "grid.toml")
    best = {"ltm": 1e-2, "ar": 3e-4}

    def rigged(run, grid, seed):
        cfg = open_run(run).cfg
        kind = "ltm" if cfg.model.latent else "ar"
        return {"nll_per_token": 5.0 + abs(np.log(cfg.train.lr / best[kind])), "num_tokens": 0, "steps": None,
                "windows": [grid.eval_windows, grid.eval_windows + SELECT_WINDOWS]}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(study_module, "selection_bound", rigged)
        summary = run_study(root / "grid.toml", tmp_path / "out", echo=lambda s: None)
    (ltm,), (twin,) = summary["ltm"], summary["twins"]
    assert ltm["lr_selection"]["lr"] == 1e-2 and twin["lr_selection"]["lr"] == 3e-4
    assert ltm["run"].endswith("base-s0-lr0.01") and twin["run"].endswith(twin_id(grid, 3e-4))
    assert ltm["reused"] and twin["reused"]  # the candidates' fits were found, not redone
    assert summary["rows"][0]["lr"] == 1e-2 and summary["rows"][0]["ar_lr"] == 3e-4
    assert ltm["lr_selection"]["select_nll_per_token"] == 5.0


def test_a_diverged_candidate_is_recorded_and_never_chosen(study, tmp_path):
    """The LTM's fit at 1e-2 stops on a non-finite loss: it is kept as diverged (select None) and the
    next lowest of the rigged numbers (3e-3) is chosen; any other error stops the study."""
    root, _, _ = study
    shutil.copytree(root / "out" / "runs", tmp_path / "out" / "runs")
    real_train = study_module.train_run

    def diverging(cfg, run, echo):
        if cfg.model.latent and cfg.train.lr == 1e-2:
            raise LtmError("non-finite loss at iteration 3; training stopped")
        return real_train(cfg, run, echo)

    def rigged(run, grid, seed):
        lr = open_run(run).cfg.train.lr
        return {"nll_per_token": 5.0 + abs(np.log(lr / 1e-2)), "num_tokens": 0, "steps": None, "windows": [4, 7]}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(study_module, "train_run", diverging)
        mp.setattr(study_module, "selection_bound", rigged)
        summary = run_study(root / "grid.toml", tmp_path / "out", echo=lambda s: None)
        (ltm,) = summary["ltm"]
        assert ltm["lr_selection"]["lr"] == 3e-3
        failed = [c for c in ltm["lr_selection"]["candidates"] if c["failed"]]
        assert [c["lr"] for c in failed] == [1e-2] and failed[0]["select_nll_per_token"] is None
        assert "diverged" in (tmp_path / "out" / "study.md").read_text()
        mp.setattr(study_module, "train_run", lambda cfg, run, echo: (_ for _ in ()).throw(LtmError("disk full")))
        with pytest.raises(LtmError, match="disk full"):
            run_study(root / "grid.toml", tmp_path / "other", echo=lambda s: None)


def test_choose_lr_skips_diverged_and_keeps_the_first_of_ties():
    c = lambda lr, nll: {"id": f"p-s0-lr{lr:g}", "lr": lr, "select": None if nll is None else {"nll_per_token": nll},
                         "failed": None if nll is not None else "non-finite loss"}
    assert choose_lr([c(1e-3, 4.0), c(3e-3, 3.5), c(1e-2, None)])["lr"] == 3e-3
    assert choose_lr([c(1e-3, 3.5), c(3e-3, 3.5)])["lr"] == 1e-3
    with pytest.raises(LtmError, match=r"every learning rate of study.lr_grid diverged: p-s0-lr0.01 \(lr 0.01\)"):
        choose_lr([c(1e-2, None)])


def test_rerun_trains_nothing_and_another_lr_grid_is_refused(study):
    root, _, _ = study
    out = root / "out"
    stamps = {p: p.stat().st_mtime_ns for p in (out / "select").iterdir()}
    run_study(root / "grid.toml", out, echo=lambda s: None)
    assert {p: p.stat().st_mtime_ns for p in (out / "select").iterdir()} == stamps
    other = root / "other.toml"
    other.write_text(GRID.replace(f"lr_grid = {LRS}", "lr_grid = [1e-3]"))
    with pytest.raises(LtmError, match="another study.lr_grid"):
        run_study(other, out, echo=lambda s: None)


@pytest.mark.parametrize("change, message", [
    ("lr_grid = []", "non-empty list of positive numbers"),
    ("lr_grid = [0.0]", "non-empty list of positive numbers"),
    ("lr_grid = [-1e-3]", "non-empty list of positive numbers"),
    ('lr_grid = ["1e-3"]', "non-empty list of positive numbers"),
    ("lr_grid = [true]", "non-empty list of positive numbers"),
    ("lr_grid = 1e-3", "non-empty list of positive numbers"),
    ("lr_grid = [nan]", "non-empty list of positive numbers"),
    ("lr_grid = [1e-3, 0.001]", "repeats a learning rate"),
    ("lr_grid = [1e-3]\nselect_windows = 0", "study.select_windows"),
])
def test_bad_lr_grids_are_refused(tmp_path, change, message):
    path = tmp_path / "grid.toml"
    path.write_text(GRID.replace(f"lr_grid = {LRS}\nselect_windows = {SELECT_WINDOWS}", change))
    with pytest.raises(LtmError, match=message):
        load_grid(path)


def test_lr_grid_conflicts_are_refused(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID.replace(f"lr_grid = {LRS}\nselect_windows = {SELECT_WINDOWS}\n", "select_windows = 3\n"))
    with pytest.raises(LtmError, match="select_windows needs study.lr_grid"):
        load_grid(path)
    path.write_text(GRID.replace("[base.train]\n", "[base.train]\nlr = 1e-3\n"))
    with pytest.raises(LtmError, match=r"\[base\] sets train.lr"):
        load_grid(path)
    path.write_text(GRID + '\n[[point]]\nname = "x"\nset = { "train.lr" = 1e-3 }\n')
    with pytest.raises(LtmError, match="point x sets train.lr"):
        load_grid(path)


def test_cli_refuses_a_bad_lr_grid_in_one_line_writing_nothing(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID.replace(f"lr_grid = {LRS}", "lr_grid = [1e-3, -1.0]"))
    out = subprocess.run([sys.executable, "-m", "ltm_ppl", "study", str(path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1
    assert "study.lr_grid" in out.stderr and not (tmp_path / "o").exists()
