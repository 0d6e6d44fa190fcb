"""report.py and the result records against the CLI's own output, recorded before either existed
(tests/report_cases.json: `--json` lines, summary.json and the text of eval, compare, sample and
diagnose on two tiny runs): the record's `to_dict()` is the JSON byte for byte, and the text view
prints every line as the CLI did."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from ltm_ppl import report
from ltm_ppl.diagnostics import DiagnoseResult
from ltm_ppl.generate import SampleResult
from ltm_ppl.eval_runs import CompareResult, CompareRow, EvalResult

CASES = json.loads((Path(__file__).parent / "report_cases.json").read_text())["cases"]


def record(command: str, data: dict):
    """The record a command returns, rebuilt from its JSON."""
    if command == "eval":
        return EvalResult(**{f.name: data[f.name] for f in fields(EvalResult)})
    if command == "compare":
        return CompareResult(data["split"], data["data"], [CompareRow(**row) for row in data["rows"]], data["truth"])
    if command == "sample":
        return SampleResult(**data)
    return DiagnoseResult(**data)


TEXT = {"eval": report.eval_text, "compare": report.compare_text, "sample": report.sample_text,
        "diagnose": report.diagnose_text}


@pytest.mark.parametrize("case", CASES, ids=[f"{c['command']}-{i}" for i, c in enumerate(CASES)])
def test_record_json_and_text_are_the_commands_own(case):
    result = record(case["command"], json.loads(case["json"]))
    assert json.dumps(result.to_dict()) == case["json"]
    if "summary_json" in case:
        assert json.dumps(result.to_dict(), indent=2) + "\n" == case["summary_json"]
    assert TEXT[case["command"]](result).splitlines() == case["text"].splitlines()
    assert TEXT[case["command"]](result) == case["text"]


def test_the_cases_cover_every_kind_of_line():
    texts = {c["command"]: "" for c in CASES}
    for c in CASES:
        texts[c["command"]] += c["text"] + "\n"
    for needle in ("honest bound, fresh noise", "sampled-KL ELBO of the same", "NOT bounds, not comparable",
                   "exact log-likelihood (no latent)"):
        assert needle in texts["eval"]
    for needle in ("PSIS k-hat max", "R-hat max", "noise floor", "bounds of each method's q", "kernel mala"):
        assert needle in texts["diagnose"]
    assert "--- sample 2 ---" in texts["sample"]


def test_an_empty_sample_is_said_on_stderr_not_in_the_text():
    """Issue 23: `ltm sample RUN --num 1 --seed 1` printed an empty line with nothing to say why."""
    one = SampleResult([""], None, "prior", "pyro", "local")
    assert report.sample_text(one) == ""
    assert report.sample_notes(one) == ["notice: the sample is empty: the model ended the text at its first new token "
                                        "(end-of-text); another --seed, a --prompt or --no-stop-at-eos gives text"]
    several = SampleResult(["And God", "And", "And"], "And", "posterior", "pyro", "local")
    assert report.sample_notes(several)[0].startswith("notice: samples 2, 3 are empty:")
    assert report.sample_notes(SampleResult(["x"], None, "prior", "pyro", "local")) == []
