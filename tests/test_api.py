"""The Python API (ltm_ppl/api.py): the documented example runs, the package exports it lazily,
bad input is refused before any work, and the records' JSON and text views (report.py)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ltm_ppl import report
from ltm_ppl.errors import LtmError
from ltm_ppl.eval_runs import EXACT_LABEL, FIXED_NOISE_LABEL, HONEST_LABEL, EvalResult

ROOT = Path(__file__).resolve().parents[1]


def docs_example() -> str:
    """The first python block of docs/api.md."""
    return re.search(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S).group(1)


def test_the_documented_example_runs(tmp_path):
    """docs/api.md's dozen lines, as a user runs them: fit a tiny run, evaluate it, sample."""
    out = subprocess.run([sys.executable, "-c", docs_example()], cwd=tmp_path, capture_output=True, text=True,
                         timeout=900, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()  # fit's own lines, then the eval table, a number, the samples
    header = next(i for i, line in enumerate(lines) if line.startswith("builtin:kjv [val]: "))
    assert lines[header].startswith("builtin:kjv [val]: the first 8 of ") and "honest bound, fresh noise" in lines[header + 2]
    table_end = next(i for i, line in enumerate(lines) if line.startswith("training FLOPs per token"))
    assert float(lines[table_end + 1]) > 0  # the --json headline number
    assert lines[table_end + 2].startswith("And God said")  # a continuation of the prompt
    assert (tmp_path / "runs" / "tiny" / "config.json").is_file()


def test_the_package_exports_the_api_lazily():
    code = ("import sys, ltm_ppl, ltm_ppl.api as api\n"
            "assert ltm_ppl.fit is api.fit and ltm_ppl.sample is api.sample and ltm_ppl.open_run is api.open_run\n"
            "print(sorted(m for m in ('torch', 'jax', 'pyro', 'numpyro', 'arviz', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_bad_input_is_refused_first_with_the_cli_line(tmp_path):
    from ltm_ppl import api

    with pytest.raises(LtmError, match=r"^--samples must be a positive integer, got 0$"):
        api.evaluate(tmp_path / "no-run", samples=0)
    with pytest.raises(LtmError, match=r"^--plot x.txt: the plot is a PNG file"):
        api.compare([tmp_path / "a", tmp_path / "b"], plot="x.txt")
    with pytest.raises(LtmError, match=r"^--num must be a positive integer"):
        api.sample(tmp_path / "no-run", num=0)
    with pytest.raises(LtmError, match=r"^--out and --resume exclude each other"):
        api.fit(out="x", resume="y")
    assert not (tmp_path / "a").exists() and not Path("x").exists()


def _row(steps, nll, label, **extra):
    return {"bound": "elbo", "nll_per_token": nll, "perplexity": 2.0, "per_sequence_mean_perplexity": 2.5,
            "num_tokens": 64, "num_sequences": 2, "steps": steps, "samples": 1, "kl_per_sequence": 0.5,
            "label": label, "fitted_steps": steps} | extra


def _result(rows, exact=False):
    return EvalResult(rows=rows, backend="pyro", inference="local", trained_with="local", split="val",
                      data="builtin:kjv", tokenizer="bytes", latent_rope="published", split_windows=10, exact=exact,
                      proposal="q", unigram_nll_per_token=3.0, unigram_perplexity=20.0, flops_per_token=1e5,
                      decoder_flops_per_token=2e4)


def test_eval_json_is_the_headline_row_then_the_record():
    rows = [_row(2, 1.5, HONEST_LABEL), _row(4, 1.2, HONEST_LABEL),
            _row(4, 0.9, FIXED_NOISE_LABEL, fixed_noise=True, reconstruction_perplexity=1.5)]
    record = _result(rows).to_dict()
    assert list(record)[:11] == list(rows[1]) and record["nll_per_token"] == 1.2  # the honest row with most steps
    assert list(record)[11:] == ["rows", "backend", "inference", "trained_with", "split", "data", "tokenizer",
                                 "latent_rope", "split_windows", "exact", "proposal", "unigram_nll_per_token",
                                 "unigram_perplexity", "flops_per_token", "decoder_flops_per_token", "truth"]
    assert _result([_row(None, 2.0, EXACT_LABEL, fitted_steps=None)], exact=True).to_dict()["nll_per_token"] == 2.0


def test_a_new_labelled_row_prints_in_the_eval_table_and_leaves_the_headline():
    """How a later row kind (e.g. a true NLL) joins: a row with its bound and label, nothing else."""
    rows = [_row(4, 1.2, HONEST_LABEL), _row(4, 1.1, "a new figure, labelled", bound="new", kl_per_sequence=None)]
    result = _result(rows)
    assert result.headline is rows[0]
    lines = report.eval_text(result).splitlines()
    assert lines[2] == "     4   elbo      1.2000       2.000    0.500           2.500  honest bound, fresh noise"
    assert lines[3] == "     4    new      1.1000       2.000        -           2.500  a new figure, labelled"
    assert lines[4].startswith("perplexity: ")


def test_eval_progress_counts_the_windows_once_per_row(tiny_toml, tmp_path):
    """Issue 23: `eval --fixed-noise` counted 178 for 89 windows; each row now has its own count
    of the split's windows."""
    import contextlib

    from helpers import run_cli

    from ltm_ppl import api

    run = tmp_path / "tiny"
    assert run_cli("fit", "--config", tiny_toml, "--out", run, "--iters", "2", "-q").exit_code == 0
    counts = []

    @contextlib.contextmanager
    def progress(total):
        counts.append([total, 0])
        yield lambda n=1: counts[-1].__setitem__(1, counts[-1][1] + n)

    result = api.evaluate(run, steps=[1, 2], fixed_noise=True, max_windows=5, batch_size=2, progress=progress)
    assert len(result.rows) == 4 and counts == [[5, 5]] * 4
