"""What `ltm eval` prints beside each number: bounds as bounds, the exact likelihood of `none` as
exact, the published reference's fixed-noise figures labelled as not bounds, the windows covered."""
from __future__ import annotations

import json
import math

import pytest
from helpers import run_cli


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory, tiny_toml, text_corpus):
    runs, runs["fit_output"] = {}, {}
    for method in ("local", "none", "amortized"):
        run = tmp_path_factory.mktemp("runs") / method
        result = run_cli("fit", "--config", tiny_toml, "--data", text_corpus, "--inference", method, "--iters", "2", "--out", run)
        assert result.exit_code == 0, result.output
        runs[method] = run
        runs["fit_output"][method] = result.stdout
    return runs


def test_fit_closing_line_says_exact_without_a_latent_and_bound_with_one(short_runs):
    """`none`'s number is the exact NLL: "=" and no KL; a latent method's is a bound: "<=" with KL."""
    closing = {m: next(line for line in out.splitlines() if line.startswith("val "))
               for m, out in short_runs["fit_output"].items()}
    assert closing["none"].startswith("val exact NLL on the first ") and "perplexity = " in closing["none"]
    assert "<=" not in closing["none"] and "KL" not in closing["none"] and "bound" not in closing["none"]
    for method in ("local", "amortized"):
        assert closing[method].startswith("val bound on the first ") and "perplexity <= " in closing[method]
        assert "KL " in closing[method]
    assert "4 steps" not in closing["amortized"] and "4 steps" in closing["local"]  # amortized: no inner steps


def test_fixed_noise_figures_are_labelled_and_kept_apart_from_the_bound(short_runs):
    run = short_runs["local"]
    result = run_cli("eval", run, "--fixed-noise", "--max-windows", "4", "--steps", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "the first 4 of" in lines[0] and "every number below covers these windows" in lines[0]
    table, _, reference = result.stdout.partition("the published reference's numbers on the same windows -- NOT bounds")
    assert reference, result.stdout
    # The table holds the honest bound only; the reference's two figures sit below, each saying "not a bound".
    assert "honest bound, fresh noise" in table and "fixed" not in table and "reconstruction" not in table
    ref_lines = reference.splitlines()[1:]
    assert len(ref_lines) == 2 and all("not a bound" in line for line in ref_lines)
    assert "fixed-noise per-sequence perplexity" in ref_lines[0]
    assert "no-KL reconstruction perplexity" in ref_lines[1] and "not a likelihood" in ref_lines[1]

    out = json.loads(run_cli("eval", run, "--fixed-noise", "--max-windows", "4", "--steps", "3", "--json").stdout.splitlines()[-1])
    honest, fixed = out["rows"]
    assert fixed["fixed_noise"] and not honest.get("fixed_noise")
    for row in (honest, fixed, out):
        assert row["reconstruction_perplexity"] == pytest.approx(math.exp(row["reconstruction_nll_per_token"]), rel=1e-9)
        assert {"nll_per_token", "per_sequence_mean_perplexity", "reconstruction_nll_per_token"} <= set(row)
    assert f"{fixed['per_sequence_mean_perplexity']:.3f}" in ref_lines[0]
    assert f"{fixed['reconstruction_perplexity']:.3f}" in ref_lines[1]


def test_fixed_noise_with_iwae_gives_the_four_numbers_in_one_command(short_runs):
    """docs/replication.md's four numbers: the analytic-KL ELBO and IWAE_K (honest, in that order;
    IWAE_K heads the record), then the reference's two figures; the ELBO equals plain eval's."""
    run, common = short_runs["local"], ("--max-windows", "4", "--steps", "3", "--json")
    out = json.loads(run_cli("eval", run, "--fixed-noise", "--bound", "iwae", "--samples", "4", *common).stdout.splitlines()[-1])
    assert [(r["bound"], bool(r.get("fixed_noise"))) for r in out["rows"]] == [("elbo", False), ("iwae", False),
                                                                               ("elbo", True)]
    assert out["bound"] == "iwae" and "reconstruction_perplexity" in out["rows"][2]
    plain = json.loads(run_cli("eval", run, "--samples", "4", *common).stdout.splitlines()[-1])
    assert out["rows"][0]["nll_per_token"] == pytest.approx(plain["nll_per_token"], rel=1e-6)


def test_none_row_is_exact_and_unfitted_methods_show_no_steps(short_runs):
    result = run_cli("eval", short_runs["none"], "--max-windows", "4")
    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[2]  # header, column names, the row
    assert row.split()[:2] == ["-", "exact"] and "exact log-likelihood" in row
    assert "bound" not in row and "fresh noise" not in row
    assert "a bound on the perplexity" not in result.stdout
    record = json.loads(run_cli("eval", short_runs["none"], "--max-windows", "4", "--json").stdout.splitlines()[-1])
    assert record["exact"] is True and record["fitted_steps"] is None
    amortized = run_cli("eval", short_runs["amortized"], "--max-windows", "4")
    assert amortized.stdout.splitlines()[2].split()[:2] == ["-", "elbo"]
    local = run_cli("eval", short_runs["local"], "--max-windows", "4", "--steps", "3")
    assert local.stdout.splitlines()[2].split()[:2] == ["3", "elbo"] and "honest bound" in local.stdout.splitlines()[2]


def test_fixed_noise_is_refused_where_it_does_not_apply(short_runs):
    result = run_cli("eval", short_runs["none"], "--fixed-noise")
    assert result.exit_code == 2 and result.stderr.strip().startswith("error: --fixed-noise applies to --inference local only")
