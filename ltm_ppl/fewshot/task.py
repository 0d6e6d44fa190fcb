"""Few-shot tasks: a train split (where clean demonstrations come from) and a test split (the
questions asked), each a list of (question, answer).

TASK is one of
- a directory holding train.jsonl and test.jsonl (GSM8K's own data folder works as it is);
- `TRAIN.jsonl,TEST.jsonl`: the two files;
- `builtin:functions?inputs=8&outputs=8&pairs=8&train=1000&test=200&seed=0` (every parameter
  optional): each item draws a fresh random map f from `inputs` letters to `outputs` digits (the
  law of the `builtin:functions` corpus, data/synthetic.py), lists `pairs` pairs "x>f(x)" as the
  corpus writes them, and asks f(x) for one more x, drawn among the inputs listed (an input not
  listed has an f(x) independent of everything shown: no model could beat 1/outputs on it; with
  pairs=0, any input). Train and test come from two children of SeedSequence(seed).

Each JSONL line is an object with a `question` and an `answer` (a string or a number). Bad input is
one LtmError naming the file and line; nothing is read twice.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.synthetic import FUNCTIONS_PARAMS, Param, canonical_spec, functions_law, parse_params
from ..errors import LtmError
from .score import normalise

DEFAULT_TEMPLATE = "Question: {question}\nAnswer: {answer}\n\n"
DEFAULT_STOP = "\n"
DEFAULT_MAX_TOKENS = 32
# builtin:functions in the corpus' own format: a demonstration is one document ("a>3 b>1 a>3"),
# documents separated by end-of-text as in training; the answer is one digit, ended by a space.
FUNCTIONS_TEMPLATE = "{question}>{answer}<|endoftext|>"
FUNCTIONS_PARAMS_TASK = tuple(p if p.name != "pairs" else Param("pairs", int, 8, 0, 1 << 12)
                              for p in FUNCTIONS_PARAMS if p.name != "docs") + (
    Param("train", int, 1000, 1, 1_000_000), Param("test", int, 200, 1, 1_000_000))


@dataclass(frozen=True)
class Task:
    """A few-shot task: its name (the canonical spec or the paths), both splits, and the prompt
    defaults that suit it (a flag given by the user wins)."""
    name: str
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    template: str = DEFAULT_TEMPLATE
    stop: str = DEFAULT_STOP
    max_tokens: int = DEFAULT_MAX_TOKENS


def _read_jsonl(path: Path, split: str) -> list[tuple[str, str]]:
    if not path.is_file():
        raise LtmError(f"--task: the {split} split {path} is not a file")
    items = []
    with path.open(encoding="utf-8", errors="strict") as fh:
        try:
            lines = fh.readlines()
        except UnicodeDecodeError as exc:
            raise LtmError(f"--task: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LtmError(f"--task: {path} line {number} is not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise LtmError(f"--task: {path} line {number} is not a JSON object with a question and an answer")
        for key in ("question", "answer"):
            value = record.get(key)
            if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value).strip() == "":
                raise LtmError(f"--task: {path} line {number} has no {key!r} (each line needs a non-empty "
                               f"'question' and 'answer')")
        items.append((str(record["question"]), str(record["answer"])))
    if not items:
        raise LtmError(f"--task: the {split} split {path} is empty")
    return items


def _functions_items(values: dict, rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    law = functions_law(values)
    k = values["pairs"]
    f = rng.integers(law.outputs, size=(n, law.inputs))
    xs = rng.integers(law.inputs, size=(n, k))
    query = xs[np.arange(n), rng.integers(k, size=n)] if k else rng.integers(law.inputs, size=n)
    items = []
    for row in range(n):
        shown = [f"{law.input_symbols[x]}>{law.output_symbols[f[row, x]]}" for x in xs[row]]
        items.append((" ".join(shown + [law.input_symbols[query[row]]]), law.output_symbols[f[row, query[row]]]))
    return items


def functions_task(query: str) -> Task:
    values = parse_params("functions", query, FUNCTIONS_PARAMS_TASK)
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(values["seed"]).spawn(2))
    return Task(canonical_spec("functions", values, FUNCTIONS_PARAMS_TASK),
                _functions_items(values, train_rng, values["train"]), _functions_items(values, test_rng, values["test"]),
                template=FUNCTIONS_TEMPLATE, stop=" ", max_tokens=2)


def load_task(spec: str) -> Task:
    """The task named by --task (see the module's docstring); refuses a missing split, an empty
    one, a line without question / answer, and a test split none of whose answers parses."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        name, _, query = spec.removeprefix("builtin:").partition("?")
        if name != "functions":
            raise LtmError(f"--task: unknown built-in task {spec!r} (known: builtin:functions)")
        task = functions_task(query)
    else:
        if "," in spec:
            parts = spec.split(",")
            if len(parts) != 2:
                raise LtmError(f"--task: give a directory or TRAIN.jsonl,TEST.jsonl, got {spec!r}")
            train_path, test_path = Path(parts[0]), Path(parts[1])
        else:
            folder = Path(spec)
            if not folder.is_dir():
                raise LtmError(f"--task: {spec} is neither a directory with train.jsonl and test.jsonl, nor "
                               f"TRAIN.jsonl,TEST.jsonl, nor builtin:functions")
            train_path, test_path = folder / "train.jsonl", folder / "test.jsonl"
        task = Task(spec, _read_jsonl(train_path, "train"), _read_jsonl(test_path, "test"))
    if all(normalise(answer) is None for _, answer in task.test):
        raise LtmError(f"--task: none of the {len(task.test)} test answers parses (no final answer after '####')")
    return task


def escaped(text: str) -> str:
    """A flag's text with \\n and \\t written as such (a shell cannot easily pass a newline)."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


PLACEHOLDERS = ("{question}", "{answer}")


def check_template(template: str) -> None:
    if any(template.count(p) != 1 for p in PLACEHOLDERS) or template.index("{question}") > template.index("{answer}"):
        raise LtmError(f"--template must hold {{question}} once and then {{answer}} once, got {template!r}")


def render(template: str, question: str, answer: str | None) -> str:
    """One demonstration (answer given) or the asked question's prompt (answer None: the template
    up to where the answer goes). Plain substitution: braces inside questions stay as they are."""
    head, _, rest = template.partition("{question}")
    middle, _, tail = rest.partition("{answer}")
    return head + question + middle + ("" if answer is None else answer + tail)


__all__ = ["DEFAULT_TEMPLATE", "Task", "check_template", "escaped", "functions_task", "load_task", "render"]
