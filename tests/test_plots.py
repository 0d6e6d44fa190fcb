"""`ltm plot`: training curves drawn from metrics.jsonl exactly as logged (plots.py, api.plot)."""
from __future__ import annotations

import json
import shutil

import pytest
from helpers import run_cli

from ltm_ppl import api, plots


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_toml):
    """A tiny run trained 6 iterations at batch size 4, resumed to 10 at batch size 8 (an event
    record in metrics.jsonl); a val evaluation at the end of each fit."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    common = ("--log-interval", "1", "-q")
    result = run_cli("fit", "--config", tiny_toml, "--out", run, "--iters", "6", "--batch-size", "4", *common)
    assert result.exit_code == 0, result.output
    result = run_cli("fit", "--resume", run, "--iters", "10", "--batch-size", "8", *common)
    assert result.exit_code == 0, result.output
    return run


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_series_are_the_records_and_tokens_follow_the_batch_size(resumed_run):
    records = _records(resumed_run)
    assert any(r.get("event") == "resume" for r in records)  # the event is in the log, and not a point
    train = [r for r in records if "loss" in r and "event" not in r]
    val = [r for r in records if r.get("split") == "val"]
    series = plots.training_series(records, batch_size=8, block_size=32)
    for name in ("loss", "nll", "kl", "lr", "grad_norm"):
        assert series["train"][name]["iter"] == [r["iter"] for r in train] == list(range(1, 11))
        assert series["train"][name]["value"] == [r[name] for r in train]
    assert series["val"]["nll_per_token"]["value"] == [r["nll_per_token"] for r in val]
    assert series["val"]["nll_per_token"]["iter"] == [6, 10]
    # 6 iterations of 4 windows then 8 windows, 32 predicted tokens per window
    tokens = dict(zip(series["train"]["loss"]["iter"], series["train"]["loss"]["tokens"]))
    assert tokens[6] == 6 * 4 * 32 and tokens[10] == 6 * 4 * 32 + 4 * 8 * 32 and tokens[1] == 4 * 32


def test_ltm_plot_writes_the_png_with_the_logged_numbers(resumed_run, tmp_path, monkeypatch):
    other = tmp_path / "other"
    shutil.copytree(resumed_run, other)
    with open(other / "metrics.jsonl", "a") as fh:  # a run still writing: its torn last line is left out
        fh.write('{"iter": 11, "lo')
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (drawn.append(fig), save(fig, path)))
    out = tmp_path / "curves.png"
    result = run_cli("plot", resumed_run, other, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "tiny (pyro/local)" in result.output and "other (pyro/local)" in result.output
    loss_panel = drawn[0].axes[0]
    assert loss_panel.get_title().startswith("training loss")
    train = [r for r in _records(resumed_run) if "loss" in r and "event" not in r]
    assert len(loss_panel.lines) == 2
    for line in loss_panel.lines:
        assert list(line.get_xdata()) == [r["iter"] for r in train]
        assert list(line.get_ydata()) == [r["loss"] for r in train]
    assert drawn[0].axes[2].get_ylim()[0] == 0  # KL from 0: a collapse is seen, not hidden
    summary = api.plot([resumed_run], tmp_path / "tokens.png", x="tokens")
    assert summary["runs"][0]["series"]["train"]["loss"]["tokens"][-1] == 6 * 4 * 32 + 4 * 8 * 32


def test_bad_input_is_one_line_and_writes_nothing(resumed_run, tmp_path):
    (tmp_path / "not_a_run").mkdir()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_text((resumed_run / "config.json").read_text())
    out = tmp_path / "x.png"
    for args, message in (((tmp_path / "missing",), "run directory not found"),
                          ((tmp_path / "not_a_run",), "not a run directory"),
                          ((fresh,), "has no metrics.jsonl"),
                          ((resumed_run, tmp_path / "missing"), "run directory not found")):
        result = run_cli("plot", *args, "--out", out)
        assert result.exit_code == 2 and message in result.output, result.output
        assert result.output.count("\n") == 1 and not out.exists()
    for bad, message in ((tmp_path / "x.jpg", "PNG"), (tmp_path / "no" / "x.png", "does not exist"),
                         ("/proc/x.png", "cannot write in /proc")):
        result = run_cli("plot", resumed_run, "--out", bad)
        assert result.exit_code == 2 and f"--out {bad}" in result.output, result.output


def test_a_run_without_latent_draws_no_kl(tmp_path, monkeypatch):
    """A no-latent run logs kl = 0: not a measure of anything, so its KL is not drawn (its val
    number is labelled the exact NLL)."""
    records = [{"iter": i, "loss": 5.0 - i / 10, "nll": 5.0 - i / 10, "kl": 0.0, "lr": 1e-3, "grad_norm": 1.0} for i in (1, 2)]
    records.append({"iter": 2, "split": "val", "bound": "elbo", "nll_per_token": 4.0, "kl_per_sequence": 0.0})
    series = plots.training_series(records, batch_size=2, block_size=8)
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
    runs = [{"label": name, "series": series, "exact": exact, "grad_clip": 1.0} for name, exact in (("ltm", False), ("ar", True))]
    plots.plot_training(runs, tmp_path / "x.png")
    loss, bound, kl = drawn[0].axes[:3]
    assert len(loss.lines) == 2 and len(bound.lines) == 2 and len(kl.lines) == 2  # the LTM's training and val KL only
    assert [t.get_text() for t in drawn[0].axes[5].get_legend().get_texts()] == ["ltm (loss 4.800, val bound 4.000)",
                                                                                 "ar (loss 4.800, val NLL 4.000)"]


def test_compare_bars_start_at_zero_and_the_difference_panel_shows_the_paired_interval(monkeypatch, tmp_path):
    """A 0.21 gap over 4.4 nats/token must not look threefold: bars from 0; the margin, with its
    interval, on its own panel."""
    seen = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: seen.setdefault("fig", fig))
    table = {"data": "builtin:kjv", "split": "val", "rows": [
        {"run": "runs/twin", "inference": "none", "nll_per_token": 4.41, "num_tokens": 8192},
        {"run": "runs/ltm", "inference": "local", "nll_per_token": 4.62, "num_tokens": 8192, "difference": 0.21,
         "paired": {"ci_low": 0.18, "ci_high": 0.24}}]}
    plots.plot_compare(table, tmp_path / "c.png")
    bars, diff = seen["fig"].axes
    assert bars.get_ylim()[0] == 0.0
    assert [round(p.get_height(), 2) for p in bars.patches] == [4.41, 4.62]
    (x, y), = diff.lines[0].get_xydata()
    assert (x, y) == (1.0, 0.21)
    low, high = diff.collections[0].get_segments()[0][:, 1]  # the error bar of the one later run
    assert (round(low, 2), round(high, 2)) == (0.18, 0.24)
