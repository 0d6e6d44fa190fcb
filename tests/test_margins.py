"""Issue 22's known answers and margin statistics: the truth rows of `ltm eval` / `ltm compare`
(data/truth.py on the very windows evaluated, never a bound), the paired per-window differences of
compare (evaluate.paired_difference) checked by hand with numpy and scipy, and the seed statistics
of a study's table."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import run_cli
from scipy import stats

from ltm_ppl import api
from ltm_ppl.data import build_tokenizer, load_corpus
from ltm_ppl.data.truth import corpus_truth, receptive_field
from ltm_ppl.evaluate import mean_interval, paired_difference, t_quantile_975
from ltm_ppl.eval_runs import EXACT_LABEL, HONEST_LABEL, EvalSettings, evaluate_run, open_run
from ltm_ppl.study import run_study, seed_markdown, seed_statistics

SPEC = "builtin:topics?k=2&v=4&len=15&docs=400&alpha=0.2"
TOML = """
[model]
n_layer = 2
n_head = 2
d_model = 32
n_z = 4
block_size = 16
attention_window = 4

[inference]
steps = 2
eval_steps = 2

[train]
iters = 30
batch_size = 8
lr = 1e-2
warmup_iters = 5
eval_interval = 30
eval_windows = 2
checkpoint_interval = 30

[data]
data = "%s"
tokenizer = "bytes"
""" % SPEC


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny LTM (local) and its AR twin (none) on builtin:topics, attention window 4."""
    root = tmp_path_factory.mktemp("margins")
    (root / "t.toml").write_text(TOML)
    out = {}
    for method in ("local", "none"):
        result = run_cli("fit", "--config", root / "t.toml", "--inference", method, "--out", root / method, "-q")
        assert result.exit_code == 0, result.output
        out[method] = root / method
    return out


def truth_of(split: str, max_windows: int | None, spec: str = SPEC) -> dict:
    """corpus_truth called directly, as data/truth.py's author says to."""
    t = corpus_truth(load_corpus(spec), build_tokenizer("bytes"), 16, receptive_field(2, 4, 16), splits=(split,),
                     max_windows=max_windows)
    return t.to_json()["splits"][split] | {"receptive_field": t.receptive_field, "position_known": t.position_known}


def last_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_eval_truth_is_corpus_truth_on_the_windows_evaluated(runs):
    record = last_json(run_cli("eval", runs["local"], "--split", "test", "--max-windows", 7, "--json", "-q"))
    want = truth_of("test", 7)
    got = record["truth"]
    for key, value in want.items():
        assert got[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key
    assert got["windows"] == record["num_sequences"] == 7 and got["tokens"] == record["num_tokens"]
    assert got["receptive_field"] == 7 and got["attention_window"] == 4
    # not a bound: never a row, never the headline (so never in eval's plot, which draws the rows)
    assert {r["label"] for r in record["rows"]} == {HONEST_LABEL} and record["label"] == HONEST_LABEL
    text = run_cli("eval", runs["local"], "--split", "test", "--max-windows", 7, "-q").stdout
    true_line = next(line for line in text.splitlines() if "true NLL" in line)
    window_line = next(line for line in text.splitlines() if "best window-4 AR" in line)
    assert f"{want['true_nll']:.4f}" in true_line.split() and "receptive field 7 tokens" in window_line
    assert f"{want['best_window_nll']:.4f}" in window_line.split()
    assert text.index("honest bound") < text.index("true NLL")
    other = SPEC.replace("seed=0", "") + "&seed=5"  # --data: the truth of the corpus evaluated
    record = last_json(run_cli("eval", runs["none"], "--data", other, "--max-windows", 5, "--json", "-q"))
    assert record["truth"]["true_nll"] == pytest.approx(truth_of("val", 5, other)["true_nll"], rel=1e-12)
    assert record["truth"]["true_nll"] != pytest.approx(truth_of("val", 5)["true_nll"], rel=1e-6)


def test_no_truth_on_a_corpus_without_a_law(runs):
    record = last_json(run_cli("eval", runs["none"], "--data", "builtin:kjv", "--max-windows", 2, "--json", "-q"))
    assert record["truth"] is None and record["label"] == EXACT_LABEL
    text = run_cli("eval", runs["none"], "--data", "builtin:kjv", "--max-windows", 2, "-q").stdout
    assert "true NLL" not in text and " AR" not in text
    table = last_json(run_cli("compare", runs["none"], runs["local"], "--data", "builtin:kjv", "--max-windows", 2,
                              "--json", "-q"))
    assert table["truth"] is None and table["rows"][1]["best_window_nll"] is None


def hand_paired(a: np.ndarray, b: np.ndarray, block: int) -> tuple[float, float, float, float]:
    d = (b - a) / block
    se = d.std(ddof=1) / math.sqrt(len(d))
    t = stats.t.ppf(0.975, len(d) - 1)
    return d.mean(), se, d.mean() - t * se, d.mean() + t * se


@pytest.mark.parametrize("kind, samples", [("elbo", 1), ("iwae", 3)])
def test_compare_pairs_the_windows(runs, kind, samples):
    W = 9
    table = api.compare([runs["none"], runs["local"]], max_windows=W, kind=kind, samples=samples)
    per = []
    for name in ("none", "local"):  # the same evaluations, window by window
        opened = open_run(runs[name])
        settings = EvalSettings("val", None, None, samples, kind if name == "local" else "elbo", max_windows=W)
        head = evaluate_run(opened, settings, per_window=True).headline
        per.append(np.array(head["window_nll"]))
        assert len(per[-1]) == W and np.mean(per[-1]) / 16 == pytest.approx(head["nll_per_token"], rel=1e-6)
    first, second = table.rows
    assert first.difference is None and first.paired is None
    assert second.difference == pytest.approx(second.nll_per_token - first.nll_per_token, abs=1e-12)
    mean, se, low, high = hand_paired(per[0], per[1], 16)
    p = second.paired
    assert p["windows"] == W and p["nats_per_token"] == pytest.approx(mean, abs=1e-9)
    assert p["nats_per_token"] == pytest.approx(second.difference, abs=1e-6)  # same windows (float32 sums)
    assert p["se"] == pytest.approx(se, rel=1e-9) and se > 0
    assert (p["ci_low"], p["ci_high"]) == pytest.approx((low, high), rel=1e-4)
    assert p["resolved"] == (low > 0 or high < 0)
    want = truth_of("val", W)
    assert table.truth["true_nll"] == pytest.approx(want["true_nll"], rel=1e-12)
    assert second.best_window_nll == pytest.approx(want["best_window_nll"], rel=1e-12) and second.receptive_field == 7


def test_a_run_against_itself_differs_by_exactly_zero(runs):
    """The same weights, windows and noise: every per-window difference is 0, so the interval has
    zero width and holds 0: not resolved (and printed so)."""
    result = run_cli("compare", runs["local"], runs["local"], "--max-windows", 5, "--json", "-q")
    p = last_json(result)["rows"][1]["paired"]
    assert p == {"nats_per_token": 0.0, "se": 0.0, "ci_low": 0.0, "ci_high": 0.0, "windows": 5, "resolved": False}
    text = run_cli("compare", runs["none"], runs["local"], runs["local"], "--max-windows", 5, "-q").stdout
    lines = text.splitlines()
    assert lines[1].split()[-2:] == ["vs", "first"] and lines[2].split()[-1] == "-"
    assert "paired over the 5 windows" in text and "true NLL of these windows" in text
    assert "best AR seeing 7 tokens (the view of none, local)" in text


def test_interval_arithmetic():
    assert t_quantile_975(1) == pytest.approx(stats.t.ppf(0.975, 1), rel=1e-4)
    for df in (2, 29, 30, 31, 60, 1000):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4)
    x = np.array([0.3, 0.1, 0.2, 0.25])
    m = mean_interval(x)
    half = stats.t.ppf(0.975, 3) * x.std(ddof=1) / 2
    assert m["resolved"] and (m["ci_low"], m["ci_high"]) == pytest.approx((x.mean() - half, x.mean() + half), rel=1e-4)
    assert not mean_interval([0.3, -0.1, 0.2])["resolved"]
    assert mean_interval([0.5]) == {"mean": 0.5, "se": None, "ci_low": None, "ci_high": None, "n": 1, "resolved": False}
    assert mean_interval([0.5, 0.5])["resolved"]  # zero width away from 0
    with pytest.raises(Exception, match="same windows"):
        paired_difference([1.0, 2.0], [1.0], 16)


def _table_row(point, seed, best, ar):
    return {"point": point, "settings": {}, "seed": seed, "eval_steps": 2, "best_bound": best, "ar_nll": ar,
            "margin_vs_ar": None if ar is None else best - ar}


def test_seed_statistics_by_hand():
    best, ar = np.array([0.90, 0.85, 0.97]), np.array([0.95, 0.93, 0.99])
    rows = [_table_row("p", s, b, a) for s, (b, a) in enumerate(zip(best, ar))] + [_table_row("q", 0, 1.0, 0.9)]
    p, q = seed_statistics(rows)
    d = best - ar
    se = d.std(ddof=1) / math.sqrt(3)
    half = stats.t.ppf(0.975, 2) * se
    assert p["seeds"] == [0, 1, 2] and p["margin_mean"] == pytest.approx(d.mean())
    assert p["margin_se"] == pytest.approx(se) and p["best_bound_se"] == pytest.approx(best.std(ddof=1) / math.sqrt(3))
    assert (p["margin_ci_low"], p["margin_ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-4)
    assert p["margin_resolved"] == (d.mean() + half < 0)  # t(2) is wide: 3 seeds rarely resolve 0.05
    assert q["margin_se"] is None and not q["margin_resolved"] and q["margin_seeds"] == 1
    text = "\n".join(seed_markdown([p, q]))
    assert "one seed: not resolved" in text and f"{d.mean():.4f} ± {se:.4f}" in text


STUDY = """
[study]
seeds = [0, 1]
eval_steps = [2]
iwae_samples = [2]
eval_windows = 6

[base.model]
n_layer = 2
n_head = 2
d_model = 32
n_z = 4
block_size = 16
attention_window = 4

[base.inference]
steps = 2
eval_steps = 2

[base.train]
iters = 10
batch_size = 8
lr = 1e-2
warmup_iters = 2
eval_interval = 10
eval_windows = 2
checkpoint_interval = 10

[base.data]
data = "%s"
tokenizer = "bytes"

[[point]]
name = "base"
""" % SPEC


def test_study_reports_seed_means_and_the_truth(tmp_path):
    (tmp_path / "grid.toml").write_text(STUDY)
    summary = run_study(tmp_path / "grid.toml", tmp_path / "out", echo=lambda s: None)
    rows, (seeds,) = summary["rows"], summary["seed_statistics"]
    assert [r["seed"] for r in rows] == [0, 1] and seeds["seeds"] == [0, 1]
    margins = np.array([r["margin_vs_ar"] for r in rows])
    assert seeds["margin_mean"] == pytest.approx(margins.mean()) and seeds["margin_se"] == pytest.approx(
        margins.std(ddof=1) / math.sqrt(2))
    want = truth_of("val", 6)
    assert all(r["true_nll"] == pytest.approx(want["true_nll"], rel=1e-12) for r in rows)
    assert all(r["best_window_nll"] == pytest.approx(want["best_window_nll"], rel=1e-12) for r in rows)
    md = (tmp_path / "out" / "study.md").read_text()
    assert "Across seeds" in md and "| true NLL | best window AR (floor) |" in md
    assert ("| resolved |" in md) == seeds["margin_resolved"]
