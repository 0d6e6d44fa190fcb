"""`ltm fewshot` (issue 24): scoring by hand, the two protocols' demonstrations, seeds, bad input,
and the two backends on one run. Real tiny runs (two iterations: the model's answers are noise,
which is all the protocol checks need)."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest
from helpers import TINY_TOML, run_cli

from ltm_ppl import api
from ltm_ppl.cli import cli
from ltm_ppl.errors import LtmError
from ltm_ppl.fewshot import CLEAN, PUBLISHED, FewshotSettings
from ltm_ppl.fewshot.prompt import demonstrations
from ltm_ppl.report import fewshot_text
from ltm_ppl.fewshot.score import bootstrap, exact_match, normalise, pass_at_k, shown, substring_match, wilson
from ltm_ppl.fewshot.task import Task, load_task, render


FUNCTIONS = "builtin:functions?pairs=3&train=12&test=3"
SHORT = "Q {question} A {answer}\n"  # a template short enough for a few demonstrations in the tiny window


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A latent run (local) and an autoregressive one (none), two iterations each, on the
    functions corpus with a window wide enough for a few demonstrations."""
    root = tmp_path_factory.mktemp("fewshot")
    toml = root / "tiny.toml"
    toml.write_text(TINY_TOML.replace("block_size = 32", "block_size = 96"))
    made = {}
    for method in ("local", "none"):
        made[method] = root / method
        result = run_cli("fit", "--config", toml, "--data", "builtin:functions?pairs=8&docs=200", "--iters", 2,
                         "--inference", method, "--out", made[method], "--quiet")
        assert result.exit_code == 0, result.output
    return made


def write_task(folder, train, test):
    folder.mkdir(parents=True, exist_ok=True)
    for name, items in (("train", train), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    return folder


def qa(prefix, n):
    return [{"question": f"{prefix}{i}", "answer": f"#### {i}"} for i in range(n)]


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


# ----- scoring by hand ------------------------------------------------------------------------

def test_pass_at_k_against_a_hand_computation():
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2) / C(5,2)
    assert pass_at_k(5, 1, 3) == pytest.approx(1 - 4 / 10)  # 1 - C(4,3) / C(5,3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5) / C(10,5)
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 0, 5) == 0.0  # c = 0
    assert pass_at_k(5, 5, 1) == 1.0 and pass_at_k(5, 5, 5) == 1.0  # n = c
    assert pass_at_k(5, 1, 5) == 1.0  # n - c < k: every 5-subset holds the correct one
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_answer_normalisation():
    assert normalise("Natalia sold 48/2 = 24 clips in May.\n#### 72") == ("number", Decimal(72))
    assert normalise("The answer is 1,234.") == ("number", Decimal(1234))
    assert normalise("#### 1,234") == normalise("1234") == normalise("1234.0")
    assert normalise("it is -3 degrees") == ("number", Decimal(-3))
    assert normalise("3.5 then 0.25") == ("number", Decimal("0.25"))
    assert normalise("  Paris \n") == ("text", "Paris") and normalise("####  ") is None and normalise("") is None
    assert shown(normalise("1,200.00")) == "1200" and shown(normalise("x")) == "x"
    gold = normalise("#### 72")
    assert exact_match("72", gold) and exact_match("so 70 + 2 = 72", gold) and exact_match("72.0 apples", gold)
    assert not exact_match("72 or 73", gold) and not exact_match("seventy-two", gold)
    assert exact_match(" Paris ", normalise("Paris")) and not exact_match("The answer is Paris.", normalise("Paris"))
    assert substring_match("I think 1,234 or so", "#### 1,234") and not substring_match("1234", "#### 1,234")


def test_intervals():
    low, high = wilson(5, 10)  # the Wilson score interval of 5 / 10, by the formula
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10)[0] == pytest.approx(0.0) and wilson(10, 10)[1] == pytest.approx(1.0)
    assert bootstrap([0.5] * 7, seed=1) == pytest.approx((0.5, 0.5))
    values = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1]
    assert bootstrap(values, seed=3) == bootstrap(values, seed=3)
    low, high = bootstrap(values, seed=3)
    assert low < 0.6 < high


def test_templates_and_the_functions_task_are_deterministic():
    assert render("Q: {question}\nA: {answer}\n\n", "2+{x}", "4") == "Q: 2+{x}\nA: 4\n\n"
    assert render("Q: {question}\nA: {answer}\n\n", "2+2", None) == "Q: 2+2\nA: "
    a, b = load_task(FUNCTIONS), load_task(FUNCTIONS)
    assert a == b and len(a.train) == 12 and len(a.test) == 3 and a.train != a.test
    for question, answer in a.test:  # the asked input is among the pairs listed, with its value
        *pairs, x = question.split(" ")
        assert len(pairs) == 3 and f"{x}>{answer}" in pairs
    assert load_task(FUNCTIONS.replace("seed=0", "") + "&seed=1").test != a.test


# ----- the protocols --------------------------------------------------------------------------

def test_clean_demonstrations_come_from_train_and_never_repeat_the_asked_question(runs, tmp_path):
    train = qa("tr", 6) + [{"question": "te0", "answer": "#### 0"}]  # the first test question, also in train
    task_dir = write_task(tmp_path / "task", train, qa("te", 3))
    task = load_task(str(task_dir))
    for seed in range(20):  # 6 other train items and 6 shots: every one of them, never index 6
        assert sorted(demonstrations(task, 0, 6, seed)) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(LtmError, match="more than the train split's 6 questions other than test question 0"):
        demonstrations(task, 0, 7, 0)
    result = api.fewshot(runs["local"], str(task_dir), shots=3, samples=2, max_tokens=3, template=SHORT,
                         out=str(tmp_path / "o.jsonl"))
    records = read_jsonl(result.out)
    assert len(records) == 3
    for record in records:
        prompt = record[CLEAN]["prompt"]
        question, demos = record["question"], record[CLEAN]["demos"]
        assert prompt.endswith(f"Q {question} A ") and prompt.count(f"Q {question} ") == 1  # only where asked
        assert not any(f"Q {other} " in prompt for other in {"te1", "te2"} - {question})  # test items: never demos
        assert prompt == "".join(f"Q {train[i]['question']} A {train[i]['answer']}\n" for i in demos) + f"Q {question} A "
        assert len(demos) == 3 and (question != "te0" or 6 not in demos)
        assert PUBLISHED not in record
    assert [row["metric"] for row in result.rows] == ["exact match", "pass@1", "pass@2"]
    assert all(row["protocol"] == CLEAN for row in result.rows)


def test_published_protocol_draws_test_demonstrations_and_scores_any_substring(runs, tmp_path):
    task_dir = write_task(tmp_path / "task", qa("tr", 4), qa("te", 3))
    result = api.fewshot(runs["local"], str(task_dir), shots=3, samples=2, max_tokens=3, published_protocol=True,
                         template=SHORT, out=str(tmp_path / "o.jsonl"))
    row = result.rows[-1]
    assert row["protocol"] == PUBLISHED and row["metric"] == "any-of-2 substring" and "not comparable" in row["label"]
    records = read_jsonl(result.out)
    for record in records:
        published = record[PUBLISHED]
        assert published["asked_question_among_demos"]  # 3 shots of the 3 test questions: the asked one too
        assert published["prompt"].count("Q te") == 4 and "Q tr" not in published["prompt"]
        assert published["solved"] == any(s["substring"] == substring_match(s["text"], record["answer"])
                                           and s["substring"] for s in published["samples"])
    assert row["value"] == pytest.approx(sum(r[PUBLISHED]["solved"] for r in records) / 3)
    assert "published protocol" in fewshot_text(result)


def test_the_seed_is_recorded_and_the_run_deterministic(runs, tmp_path):
    args = dict(shots=2, samples=2, max_tokens=2, seed=7)
    first = api.fewshot(runs["local"], FUNCTIONS, out=str(tmp_path / "a.jsonl"), **args)
    again = api.fewshot(runs["local"], FUNCTIONS, out=str(tmp_path / "b.jsonl"), **args)
    other = api.fewshot(runs["local"], FUNCTIONS, out=str(tmp_path / "c.jsonl"), **(args | {"seed": 8}))
    assert first.seed == 7 and first.to_dict()["seed"] == 7 and first.rows == again.rows
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert [r[CLEAN]["demos"] for r in read_jsonl(first.out)] != [r[CLEAN]["demos"] for r in read_jsonl(other.out)]
    assert json.loads(json.dumps(first.to_dict()))["rows"][0]["interval"].startswith("Wilson")
    fewer = api.fewshot(runs["local"], FUNCTIONS, out=str(tmp_path / "d.jsonl"), max_questions=2, **args)
    assert fewer.questions == 2 and read_jsonl(fewer.out) == read_jsonl(first.out)[:2]  # per-question draws


def test_both_backends_give_the_same_greedy_numbers(runs, tmp_path, jax_caches):
    """On the `none` run (no z: the two backends draw z from different generators, so a latent
    run's answers agree only in distribution) greedy answers are a function of the weights."""
    args = dict(shots=2, samples=1, temperature=0.0, max_tokens=2, seed=3)
    pyro = api.fewshot(runs["none"], FUNCTIONS, backend="pyro", out=str(tmp_path / "p.jsonl"), **args)
    jax = api.fewshot(runs["none"], FUNCTIONS, backend="numpyro", out=str(tmp_path / "n.jsonl"), **args)
    assert pyro.backend == "pyro" and jax.backend == "numpyro"
    assert [r["value"] for r in pyro.rows] == [r["value"] for r in jax.rows]
    texts = [[r[CLEAN]["greedy"]["text"]] + [s["text"] for s in r[CLEAN]["samples"]] for r in read_jsonl(pyro.out)]
    assert texts == [[r[CLEAN]["greedy"]["text"]] + [s["text"] for s in r[CLEAN]["samples"]] for r in read_jsonl(jax.out)]


def test_truncation_drops_the_oldest_demonstrations_and_counts_what_does_not_fit(runs, tmp_path):
    long_question = "x" * 120  # longer than the window of 97 tokens by itself
    task_dir = write_task(tmp_path / "task", qa("train question ", 8),
                          qa("te", 2) + [{"question": long_question, "answer": "#### 1"}])
    out = tmp_path / "o.jsonl"
    result = api.fewshot(runs["local"], str(task_dir), shots=8, samples=1, max_tokens=3, overflow="truncate",
                         out=str(out))
    records = read_jsonl(out)
    kept = [r[CLEAN] for r in records]
    assert kept[0]["dropped_demos"] > 0 and kept[0]["fits"] and kept[0]["prompt_tokens"] + 3 <= 97
    assert not kept[2]["fits"] and kept[2]["demos"] == [] and not kept[2]["greedy"]["correct"]
    assert result.unfit == 1 and result.truncated == 2 and result.scored == 3  # counted, never dropped
    assert result.rows[0]["questions"] == 3
    assert any("did not fit" in note for note in result.notes) and "did not fit" in fewshot_text(result)


# ----- bad input: one error line, exit 2, nothing written -------------------------------------

def bad_cases(tmp_path):
    no_answer = write_task(tmp_path / "no_answer", qa("tr", 3), [{"question": "q"}])
    empty_train = write_task(tmp_path / "empty", [], qa("te", 2))
    never = write_task(tmp_path / "never", qa("tr", 3), [{"question": "q", "answer": "####"}] * 2)
    good = write_task(tmp_path / "good", qa("tr", 3), qa("te", 2))
    long = write_task(tmp_path / "long", qa("tr", 3), [{"question": "y" * 200, "answer": "#### 1"}])
    return [
        (["--task", no_answer], f"{no_answer}/test.jsonl line 1 has no 'answer'"),
        (["--task", empty_train], f"the train split {empty_train}/train.jsonl is empty"),
        (["--task", good, "--shots", 4], "--shots 4 is more than the train split's 3 questions"),
        (["--task", long, "--shots", 1, "--max-tokens", 4], "is 250 tokens (BOS included) and --max-tokens 4 more: "
                                                            "254 > the model's window of 97 tokens"),
        (["--task", good, "--samples", 0], "--samples must be a positive integer, got 0"),
        (["--task", never], "none of the 2 test answers parses"),
        (["--task", good, "--pass-at", 3, "--samples", 2], "--pass-at 3 needs at least 3 samples"),
        (["--task", "builtin:functions?pairs=-1"], "builtin:functions: parameter pairs must be an integer from 0"),
    ]


def test_each_bad_input_is_one_error_line_and_nothing_written(runs, tmp_path):
    for args, message in bad_cases(tmp_path):
        out = tmp_path / "never.jsonl"
        result = run_cli("fewshot", runs["local"], *args, "--out", out)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (message, result.output)
        assert not out.exists()


def test_the_command_prints_the_table_and_json(runs, tmp_path):
    out = tmp_path / "o.jsonl"
    result = run_cli("fewshot", runs["local"], "--task", FUNCTIONS, "--shots", 1, "--samples", 2, "--quiet",
                     "--out", out, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    assert record["out"] == str(out) and record["task"].startswith("builtin:functions?") and len(record["rows"]) == 3
    assert record["stop"] == " " and record["max_tokens"] == 2 and record["questions"] == 3
    assert len(read_jsonl(out)) == 3
    result = run_cli("fewshot", runs["local"], "--task", FUNCTIONS, "--shots", 1, "--samples", 2, "--quiet", "--out", out)
    assert result.exit_code == 2 and "exists" in result.output  # never overwritten


def test_settings_refuse_before_touching_the_run(tmp_path):
    with pytest.raises(LtmError, match="--overflow must be refuse or truncate"):
        FewshotSettings(overflow="wrap")
    with pytest.raises(LtmError, match="--template must hold"):
        api.fewshot(tmp_path / "no-such-run", FUNCTIONS, template="{answer} {question}")
    assert Task("t", [("a", "1")], [("b", "2")]).template.startswith("Question: ")
