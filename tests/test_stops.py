"""Stop strings in generation (models/stops.py, generate.stop_token_sequences, issue 24): a row
stops once its new tokens end with a stop sequence, the batch once every row has; every row's
text up to its stop is what generation without the rule gives, and generation ends early."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import TINY_TOML, run_cli

import json

from ltm_ppl import api
from ltm_ppl.generate import generate_text, stop_token_sequences
from ltm_ppl.models.stops import StopRows

PROMPT = "And God said, Let there be light: and there was"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stops")
    toml = root / "tiny.toml"
    toml.write_text(TINY_TOML.replace("block_size = 32", "block_size = 96"))
    result = run_cli("fit", "--config", toml, "--iters", 3, "--out", root / "run", "--quiet")
    assert result.exit_code == 0, result.output
    return root / "run"


def test_rows_stop_at_their_own_sequence_and_the_batch_when_all_have():
    stops = StopRows(3, stop_id=0, sequences=[[7, 8]])
    assert stops.active and not StopRows(2).active
    assert not stops.update([7, 5, 1])
    assert not stops.update([8, 7, 1])  # row 0: 7 8
    assert stops.done.tolist() == [True, False, False]
    assert not stops.update([1, 9, 0])  # row 2: end-of-text; row 1's 7 was interrupted
    assert stops.update([1, 7, 4]) is False and stops.update([1, 8, 4]) is True


def test_stop_sequences_are_the_encoding_and_every_token_holding_the_stop(run):
    opened = api.open_run(run)
    tok = opened.tokenizer
    seqs = stop_token_sequences(tok, "\n")
    assert seqs[0] == tok.encode("\n")
    table = tok.token_bytes()
    assert all(b"\n" in table[s[0]] for s in seqs[1:]) and len(seqs) - 1 == sum(b is not None and b"\n" in b for b in table)


def spy_lengths(monkeypatch, inference):
    lengths = []
    real = inference.generate

    def spy(*args, **kw):
        out = real(*args, **kw)
        lengths.append(out.shape[1])
        return out

    monkeypatch.setattr(inference, "generate", spy)
    return lengths


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_answers_unchanged_to_the_stop_and_generation_stops_early(run, backend, monkeypatch):
    opened = api.open_run(run, backend=backend)
    inf, tok = opened.inference, opened.tokenizer
    lengths = spy_lengths(monkeypatch, inf)
    max_new = 40
    for temperature, num in ((0.0, 1), (1.0, 3)):
        full = generate_text(inf, tok, PROMPT, num, max_new, temperature, 0, 2, 5, stop_at_eos=True)
        news = [t[len(PROMPT):] for t in full]
        # a stop that occurs in every row: the character most rows hold, earliest
        chars = sorted(set(news[0]), key=lambda c: (-sum(c in n for n in news), news[0].index(c)))
        stop = chars[0]
        stopped = generate_text(inf, tok, PROMPT, num, max_new, temperature, 0, 2, 5, stop_at_eos=True, stop=stop)
        assert [t[len(PROMPT):].split(stop, 1)[0] for t in stopped] == [n.split(stop, 1)[0] for n in news]
        if all(stop in n for n in news):  # byte tokenizer: each character its own token here
            assert lengths[-1] < lengths[-2]
            assert lengths[-1] == max(len(n[:n.index(stop) + 1].encode()) for n in news)
        if temperature == 0.0:
            assert stop in news[0] and lengths[-1] < max_new


def test_fewshot_answers_are_those_of_generation_without_the_stop_rule(run, tmp_path, monkeypatch):
    """The same fewshot records as when generate is not told the stop (the texts cut afterwards,
    as before), with fewer tokens generated."""
    import ltm_ppl.fewshot.run as fewshot_run

    task = tmp_path / "task"
    task.mkdir()
    for name in ("train", "test"):
        items = [{"question": f"who {i}", "answer": f"#### {i}"} for i in range(4)]
        (task / f"{name}.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    settings = dict(shots=1, samples=3, temperature=1.0, max_tokens=40, stop="e", template="Q {question} A {answer}\n")
    records, generated = {}, {}
    real = fewshot_run.generate_text
    for rule in ("stop", "no stop"):
        if rule == "no stop":
            monkeypatch.setattr(fewshot_run, "generate_text", lambda *a, stop=None, **k: real(*a, **k))
        opened = api.open_run(run)
        lengths = spy_lengths(monkeypatch, opened.inference)
        out = tmp_path / f"{rule}.jsonl"
        api.fewshot(opened, str(task), out=str(out), **settings)
        records[rule] = [json.loads(line) for line in out.read_text().splitlines()]
        generated[rule] = sum(lengths)
    assert records["stop"] == records["no stop"]
    assert generated["stop"] < generated["no stop"], generated
