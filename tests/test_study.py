"""The study machinery on a two-point tiny grid: the table's numbers are `ltm eval`'s, AR twins are
shared where they read the same settings, plots are written, a rerun trains nothing, an
interrupted fit is resumed, and a bad grid is one error line before anything runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ltm_ppl.errors import LtmError
from ltm_ppl.study import run_study
from ltm_ppl.study_grid import load_grid, parse_grid
from ltm_ppl.study_runs import in_use

GRID = """
[study]
seeds = [0]
eval_steps = [1, 3]
iwae_samples = [1, 4]
iwae_steps = [3]
eval_windows = 6
flops_twins = true

[base.model]
n_layer = 2
n_head = 2
d_model = 32
n_z = 4
block_size = 32

[base.inference]
steps = 2
eval_steps = 3

[base.train]
iters = 12
batch_size = 6
lr = 3e-3
warmup_iters = 2
eval_interval = 6
eval_windows = 6
checkpoint_interval = 6

[base.data]
tokenizer = "bytes"

[[point]]
name = "base"

[[point]]
name = "window8"
set = { "model.attention_window" = 8 }
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "grid.toml").write_text(GRID)
    summary = run_study(root / "grid.toml", root / "out", echo=lambda s: None)
    return root, summary


def test_table_has_every_row_with_twins_kl_and_active_units(study):
    root, summary = study
    out = root / "out"
    assert summary["points_done"] == summary["points_total"] == 2
    rows = summary["rows"]
    assert [(r["point"], r["eval_steps"]) for r in rows] == [("base", 1), ("base", 3), ("window8", 1), ("window8", 3)]
    for r in rows:
        assert r["ar_nll"] is not None and r["kl_per_window"] >= 0 and 0 <= r["active_units"] <= r["num_units"] == 4 * 32
        assert r["margin_vs_ar"] == pytest.approx(r["best_bound"] - r["ar_nll"])
    at3 = [r for r in rows if r["eval_steps"] == 3]
    assert all({"iwae_1", "iwae_4"} <= set(r) for r in at3)
    # twins: base's (full attention) is also window8's full-attention twin; window8 adds its own,
    # and each point's same-window twin trained for the LTM's training FLOPs
    assert len(summary["twins"]) == 4
    assert rows[2]["ar_full_attention_nll"] == rows[0]["ar_nll"] != rows[2]["ar_nll"]
    flops = next(t for t in summary["twins"] if t["twin"] == "equal FLOPs" and t["twin_of"] == "base")
    ltm_record = next(r for r in summary["ltm"] if r["point"] == "base")
    assert flops["train_flops"] == pytest.approx(ltm_record["train_flops"], rel=0.05) and flops["iters"] > 12
    assert rows[0]["ar_equal_flops_tokens"] == flops["train_tokens"]
    md = (out / "study.md").read_text()
    assert "upper bound" in md and "| window8: attention_window=8 | 0 | 3 |" in md
    for name in ("bound_vs_tokens.png", "bound_vs_steps.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    ltm = json.loads((out / "points" / "base-s0.json").read_text())
    assert [p["iter"] for p in ltm["curve"]] == [6, 12] and ltm["train_tokens"] == 12 * 6 * 32


def test_table_numbers_are_ltm_evals(study):
    root, summary = study
    run = root / "out" / "runs" / "base-s0"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "ltm_ppl", "eval", str(run), "--steps", "3", "--bound", "iwae", "--samples", "4",
                          "--max-windows", "6", "--json", "-q"], capture_output=True, text=True, env=env, check=True)
    record = json.loads(out.stdout.splitlines()[-1])
    row = next(r for r in summary["rows"] if r["point"] == "base" and r["eval_steps"] == 3)
    assert row["iwae_4"] == pytest.approx(record["nll_per_token"], rel=1e-6)


def test_rerun_trains_nothing_and_an_interrupted_fit_resumes(study):
    root, _ = study
    out = root / "out"
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    metrics = (out / "runs" / "base-s0" / "metrics.jsonl").read_text()
    # an interrupted study: the window point's record gone, its fit stopped after 6 of 12 iterations
    import shutil

    from ltm_ppl.run import committed_checkpoints
    from ltm_ppl.train import fit

    (out / "points" / "window8-s0.json").unlink()
    run = out / "runs" / "window8-s0"
    shutil.rmtree(run)
    grid = load_grid(root / "grid.toml")
    cfg = grid.config(grid.points[1], 0)
    cfg.train.iters, cfg.train.lr_decay_iters = 6, 12
    fit(cfg, out=str(run), progress=False, echo=lambda s: None)
    assert committed_checkpoints(run)[-1][0] == 6
    summary = run_study(root / "grid.toml", out, echo=lambda s: None)
    assert (out / "runs" / "base-s0" / "metrics.jsonl").read_text() == metrics  # not trained again
    for name, stamp in stamps.items():
        if name != "window8-s0.json":
            assert (out / "points" / name).stat().st_mtime_ns == stamp, name
    redone = json.loads((out / "points" / "window8-s0.json").read_text())
    assert redone["resumed"] and committed_checkpoints(run)[-1][0] == 12
    assert summary["points_done"] == 2


def test_latents_in_use_rule():
    assert in_use([0.6, 0.6, 0.1, 0.1], 64)["latents_in_use"]  # 1.4 nats / 64 tokens = 0.022, half above 0.5
    assert not in_use([0.6, 0.6, 0.1, 0.1], 128)["latents_in_use"]  # 0.011 nats/token
    assert not in_use([3.0, 0.4, 0.4, 0.4], 32)["latents_in_use"]  # one vector carries it all
    assert in_use([1.0, 2.0], 10)["kl_per_window"] == 3.0


@pytest.mark.parametrize("change, message", [
    ('[[point]]\nname = "x"\nset = { "model.nz" = 3 }', "unknown setting model.nz"),
    ('[[point]]\nname = "x"\nset = { "train.seed" = 3 }', "seeds"),
    ('[[point]]\nname = "base"', "point names repeat: base"),
    ('[[point]]\nname = "a/b"', "needs a name"),
    ('[[point]]\nname = "x"\nset = { "inference.method" = "none" }', "AR twins are added by the study"),
    ('[[point]]\nname = "x"\nset = { "model.n_z" = 3 }', "must be divisible"),
    ('[[point]]\nname = "x"\nset = { "train.iters" = "many" }', "train.iters must be int"),
])
def test_bad_grids_are_refused(tmp_path, change, message):
    path = tmp_path / "grid.toml"
    path.write_text(GRID + "\n" + change + "\n")
    with pytest.raises(LtmError, match=message):
        load_grid(path)


def test_cli_refuses_a_bad_grid_in_one_line_writing_nothing(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID.replace("eval_windows = 6", "eval_windows = 0"))
    out = subprocess.run([sys.executable, "-m", "ltm_ppl", "study", str(path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1
    assert "study.eval_windows" in out.stderr and not (tmp_path / "o").exists()


def test_parse_grid_needs_points():
    with pytest.raises(LtmError, match="no points"):
        parse_grid({"study": {}})


def test_eval_and_compare_plots(study, tmp_path):
    from helpers import run_cli

    root, _ = study
    runs = root / "out" / "runs"
    twin = next(p for p in runs.iterdir() if p.name.startswith("ar-"))
    result = run_cli("eval", runs / "base-s0", "--steps", "1,3", "--max-windows", "4", "--plot", tmp_path / "steps.png", "--json", "-q")
    assert result.exit_code == 0, result.output
    assert [r["steps"] for r in json.loads(result.output.splitlines()[-1])["rows"]] == [1, 3]
    assert (tmp_path / "steps.png").read_bytes()[:4] == b"\x89PNG"
    result = run_cli("compare", runs / "base-s0", twin, "--max-windows", "4", "--plot", tmp_path / "cmp.png", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    for bad, message in ((tmp_path / "x.jpg", "PNG"), (tmp_path / "missing" / "x.png", "does not exist"),
                         (Path("/proc/x.png"), "cannot write in /proc")):  # refused before the evaluation
        result = run_cli("eval", runs / "base-s0", "--plot", bad)
        assert result.exit_code == 2 and message in result.output and not bad.exists()
