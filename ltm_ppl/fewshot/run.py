"""Few-shot in-context evaluation of a run (`ltm fewshot RUN --task TASK`), callable from Python.

For each test question: K demonstrations from the TRAIN split (drawn per question with a seed
derived from the recorded one; a train item whose question is the asked one is never drawn),
rendered with the template, then the asked question; z is inferred from that prompt by the run's
method (generate.generate_text: `none` runs take no z) and the answer generated, cut at the stop
string. One greedy answer (temperature 0) and N sampled ones (--samples, --temperature), each
sample with its own z. Scores (fewshot.score): exact match of the normalised final answer; greedy
accuracy with a Wilson interval, pass@1 and unbiased pass@k of the samples with bootstrap
intervals over questions.

--published-protocol adds one labelled row scored as the published GSM8K script does: its
demonstrations drawn from the TEST split without excluding the asked question, solved when any
of the N samples contains the gold answer as a substring. Never the default: it shows how much
of a figure the protocol makes.

Prompts longer than the window: refused before any generation (the default), or, with
overflow="truncate", the oldest demonstrations dropped until the prompt fits; a question that
does not fit even without demonstrations is counted, recorded and scored as unsolved.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import resources
from ..checks import MAX_SAMPLES, require_at_most, require_non_negative, require_positive, require_seed, require_steps
from ..destination import check_creatable
from ..durable import atomic_write_text
from ..errors import LtmError
from .prompt import CLEAN, PUBLISHED, Prompt, build_prompt, demonstrations, seed_for, train_by_question
from .score import (BOOTSTRAP, WILSON, bootstrap, exact_match, normalise, pass_at_k, shown, substring_match,
                            wilson)
from .task import Task, check_template
from ..generate import MAX_NEW_TOKENS, generate_text

OVERFLOW = ("refuse", "truncate")


@contextlib.contextmanager
def no_progress(total: int):
    yield lambda n=1: None


@dataclass
class FewshotSettings:
    """What `ltm fewshot` asks for; None takes the task's default (template, stop, max_tokens) or
    the run's (steps: eval_steps, seed: train.seed). pass_at: the k of pass@k besides 1 (default: N)."""
    shots: int = 8
    samples: int = 5
    temperature: float = 1.0
    pass_at: tuple[int, ...] | None = None
    max_tokens: int | None = None
    stop: str | None = None
    template: str | None = None
    steps: int | None = None
    seed: int | None = None
    max_questions: int | None = None
    overflow: str = "refuse"
    published_protocol: bool = False
    out: str | None = None

    def __post_init__(self):
        require_non_negative("--shots", self.shots, integer=True)
        require_positive("--samples", self.samples, required=True)
        require_at_most("--samples", self.samples, MAX_SAMPLES)
        require_non_negative("--temperature", self.temperature)
        require_positive("--max-tokens", self.max_tokens)
        require_at_most("--max-tokens", self.max_tokens, MAX_NEW_TOKENS)
        require_steps("--steps", self.steps)
        require_seed("--seed", self.seed)
        require_positive("--max-questions", self.max_questions)
        for k in self.pass_at or ():
            require_positive("--pass-at", k)
            if k > self.samples:
                raise LtmError(f"--pass-at {k} needs at least {k} samples per question, got --samples {self.samples}")
        if self.overflow not in OVERFLOW:
            raise LtmError(f"--overflow must be refuse or truncate, got {self.overflow!r}")
        if self.stop is not None and not self.stop:
            raise LtmError("--stop is empty")
        if self.template is not None:
            check_template(self.template)

    def ks(self) -> list[int]:
        return sorted({1, *(self.pass_at if self.pass_at else (self.samples,))})


@dataclass(frozen=True)
class FewshotResult:
    """What `ltm fewshot` measured: one row per figure (protocol, decoding, metric, value, 95%
    interval and how it was computed), and what they were measured on. `to_dict()` is the `--json`
    object; report.fewshot_text the table; `out` the JSONL of every question."""
    rows: list[dict]
    task: str
    run: str
    backend: str
    inference: str
    trained_with: str
    shots: int
    samples: int
    temperature: float
    max_tokens: int
    stop: str
    template: str
    steps: int
    seed: int
    overflow: str
    train_size: int
    test_size: int
    questions: int  # asked: the first max_questions of the test split
    scored: int  # of those, with a gold answer that parses (the rows' denominator)
    unparsed: int  # asked, but the gold answer has no final answer: not scored
    unfit: int  # prompts that did not fit the window even without demonstrations: scored as unsolved
    truncated: int  # prompts whose oldest demonstrations were dropped to fit
    window: int
    out: str
    published_protocol: bool
    notes: list[str] = field(default_factory=list)

    @property
    def headline(self) -> dict:
        return self.rows[0]

    def to_dict(self) -> dict:
        return asdict(self)


def _cut(text: str, stop: str) -> str:
    return text.split(stop, 1)[0]


def _answers(opened, prompt: Prompt, num: int, temperature: float, max_tokens: int, steps: int, stop: str,
             seed: int) -> list[str]:
    """`num` answers to the prompt, each with its own z from the posterior given the prompt."""
    texts = generate_text(opened.inference, opened.tokenizer, prompt.text, num, max_tokens, temperature, 0, steps, seed,
                          stop=stop)
    return [_cut(t[len(prompt.text):], stop) for t in texts]


def _prompt_record(p: Prompt) -> dict:
    return {"demos": p.demos, "dropped_demos": p.dropped, "prompt_tokens": p.tokens, "fits": p.fits, "prompt": p.text}


def _clean_record(p: Prompt, gold, seed: int, index: int, opened, max_tokens: int, steps: int, stop: str, samples: int,
                  temperature: float) -> dict:
    """A question by the clean protocol: one greedy answer and `samples` sampled ones, each with
    its verdict (exact match); a prompt that does not fit gets empty answers, all wrong."""
    greedy, sampled = [""], [""] * samples
    if p.fits:
        greedy = _answers(opened, p, 1, 0.0, max_tokens, steps, stop, seed_for(seed, index, "greedy"))
        sampled = _answers(opened, p, samples, temperature, max_tokens, steps, stop, seed_for(seed, index, "sampled"))

    def verdict(text: str) -> dict:
        return {"text": text, "answer": shown(normalise(text)), "correct": p.fits and exact_match(text, gold)}

    verdicts = [verdict(t) for t in sampled]
    return {**_prompt_record(p), "greedy": verdict(greedy[0]), "samples": verdicts,
            "correct_samples": sum(v["correct"] for v in verdicts)}


def _published_record(p: Prompt, answer: str, index: int, seed: int, opened, max_tokens: int, steps: int, stop: str,
                      samples: int, temperature: float) -> dict:
    """A question by the published protocol: `samples` answers, solved if any holds the gold
    final answer as a substring."""
    texts = _answers(opened, p, samples, temperature, max_tokens, steps, stop, seed) if p.fits else [""] * samples
    hits = [p.fits and substring_match(t, answer) for t in texts]
    return {**_prompt_record(p), "asked_question_among_demos": index in p.demos,
            "samples": [{"text": t, "substring": h} for t, h in zip(texts, hits)], "solved": any(hits)}


def _out_path(out: str | None) -> Path:
    path = Path(out) if out is not None else Path(f"fewshot-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.jsonl")
    if path.exists() or path.is_symlink():
        raise LtmError(f"--out {path} exists: a few-shot record is never overwritten")
    check_creatable(path.absolute().parent, "the folder of --out")
    return path


def _row(protocol: str, decoding: str, metric: str, values, interval: str, seed: int, label: str, index: int = 0) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if interval == WILSON:
        low, high = wilson(int(values.sum()), values.size)
    else:
        low, high = bootstrap(values, seed_for(seed, index, "bootstrap"))
    return {"protocol": protocol, "decoding": decoding, "metric": metric, "value": float(values.mean()) if values.size else 0.0,
            "low": low, "high": high, "interval": interval, "questions": int(values.size), "label": label}


def fewshot_run(opened, task: Task, settings: FewshotSettings | None = None, progress=no_progress) -> FewshotResult:
    """`ltm fewshot` on an opened run (eval_runs.open_run) and a loaded task (fewshot.task.load_task).
    Every check and every prompt comes first; the JSONL is written once, at the end."""
    s = settings or FewshotSettings()
    cfg = opened.cfg
    template = s.template if s.template is not None else task.template
    stop = s.stop if s.stop is not None else task.stop
    max_tokens = s.max_tokens if s.max_tokens is not None else task.max_tokens
    steps = s.steps or cfg.inference.eval_steps
    seed = cfg.train.seed if s.seed is None else s.seed
    window = cfg.model.block_size + 1
    if s.shots > len(task.train):
        raise LtmError(f"--shots {s.shots} is more than the train split's {len(task.train)} questions")
    if s.published_protocol and s.shots > len(task.test):
        raise LtmError(f"--shots {s.shots} is more than the test split's {len(task.test)} questions "
                       f"(--published-protocol draws its demonstrations there)")
    out = _out_path(s.out)
    asked = range(min(len(task.test), s.max_questions or len(task.test)))
    golds = [normalise(task.test[i][1]) for i in asked]
    scored = [i for i in asked if golds[i] is not None]
    if not scored:
        raise LtmError(f"--task: none of the {len(asked)} test answers asked parses (no final answer after '####')")
    same = train_by_question(task)
    prompts = {i: build_prompt(task, i, demonstrations(task, i, s.shots, seed, CLEAN, same), task.train, template, opened.tokenizer,
                               max_tokens, window, s.overflow, CLEAN) for i in scored}
    published = {i: build_prompt(task, i, demonstrations(task, i, s.shots, seed, PUBLISHED), task.test, template,
                                 opened.tokenizer, max_tokens, window, s.overflow, PUBLISHED)
                 for i in scored} if s.published_protocol else {}
    num = max(s.samples, 1)
    needed = resources.inference_bytes(cfg.model, num) + 2 * resources.FLOAT * num * cfg.model.block_size * \
        cfg.model.d_model * cfg.model.n_layer
    resources.check("few-shot generation", needed, cfg, "a smaller --samples")

    records, greedy_ok, counts, solved = [], [], [], []
    generation = dict(opened=opened, max_tokens=max_tokens, steps=steps, stop=stop, samples=s.samples,
                      temperature=s.temperature)
    with progress(len(asked)) as advance:
        for i in asked:
            question, answer = task.test[i]
            record = {"index": i, "question": question, "answer": answer, "gold": shown(golds[i]), "scored": i in prompts}
            if i in prompts:
                record[CLEAN] = _clean_record(prompts[i], golds[i], seed, i, **generation)
                greedy_ok.append(record[CLEAN]["greedy"]["correct"])
                counts.append(record[CLEAN]["correct_samples"])
            if i in published:
                record[PUBLISHED] = _published_record(published[i], answer, i, seed_for(seed, i, "published"),
                                                      **generation)
                solved.append(record[PUBLISHED]["solved"])
            records.append(record)
            advance(1)

    n = s.samples
    rows = [_row(CLEAN, "greedy", "exact match", greedy_ok, WILSON, seed,
                 "clean: train-split demonstrations, greedy answer, exact match")]
    for index, k in enumerate(s.ks()):
        rows.append(_row(CLEAN, "sampled", f"pass@{k}", [pass_at_k(n, c, k) for c in counts], BOOTSTRAP, seed,
                         f"clean: train-split demonstrations, unbiased pass@{k} of {n} samples at temperature "
                         f"{s.temperature:g}, exact match", index))
    if s.published_protocol:
        rows.append(_row(PUBLISHED, "sampled", f"any-of-{n} substring", solved, WILSON, seed,
                         f"published protocol: test-split demonstrations (asked question not excluded), solved if any "
                         f"of {n} samples contains the answer as a substring; not comparable with the clean rows"))
    unfit = sum(not p.fits for p in [*prompts.values(), *published.values()])
    truncated = sum(p.dropped > 0 and p.fits for p in [*prompts.values(), *published.values()])
    notes = []
    if len(scored) < len(asked):
        notes.append(f"{len(asked) - len(scored)} of {len(asked)} questions asked have no parsable gold answer: not scored")
    if unfit:
        notes.append(f"{unfit} prompts did not fit the window of {window} tokens even without demonstrations: "
                     f"scored as unsolved")
    if truncated:
        notes.append(f"{truncated} prompts had their oldest demonstrations dropped to fit the window")
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return FewshotResult(rows, task.name, str(opened.path), cfg.train.backend, cfg.inference.method,
                         opened.trained_method, s.shots, s.samples, s.temperature, max_tokens, stop, template, steps,
                         seed, s.overflow, len(task.train), len(task.test), len(asked), len(scored),
                         len(asked) - len(scored), unfit, truncated, window, str(out), s.published_protocol, notes)


__all__ = ["CLEAN", "PUBLISHED", "FewshotResult", "FewshotSettings", "fewshot_run"]
