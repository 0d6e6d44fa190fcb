"""Which demonstrations a few-shot question gets and the prompt they make.

Clean protocol: K items of the TRAIN split, drawn per question with a seed of (the recorded seed,
the question's index), never an item whose question text is the asked one. Published protocol: K
items of the TEST split, the asked question not excluded. The prompt is the demonstrations written
with the template, oldest first, then the asked question up to where its answer goes; it fits when
BOS + prompt + max_tokens <= the window (block_size + 1): otherwise refused, or (truncate) the
oldest demonstrations dropped until it fits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import LtmError
from .task import Task, render

CLEAN, PUBLISHED = "clean", "published"
_PURPOSE = {"demos": 0, "published-demos": 1, "greedy": 2, "sampled": 3, "published": 4, "bootstrap": 5}


def seed_for(seed: int, index: int, purpose: str) -> int:
    """A 32-bit seed of (the recorded seed, question, purpose): a question's draws do not depend
    on which other questions are asked."""
    return int(np.random.SeedSequence([seed, index, _PURPOSE[purpose]]).generate_state(1)[0])


def train_by_question(task: Task) -> dict[str, list[int]]:
    """The train items of each question text (stripped): what the clean protocol never shows a
    question asked with the same text."""
    same: dict[str, list[int]] = {}
    for i, (question, _) in enumerate(task.train):
        same.setdefault(question.strip(), []).append(i)
    return same


def demonstrations(task: Task, index: int, shots: int, seed: int, protocol: str = CLEAN,
                   same: dict[str, list[int]] | None = None) -> list[int]:
    """Indices of the demonstrations of test question `index`: from train, never an item whose
    question is the asked one (clean; `same`: train_by_question(task), computed once by callers
    asking many questions); or from test, the asked question not excluded (published)."""
    if shots == 0:
        return []
    if protocol == PUBLISHED:
        rng = np.random.default_rng(seed_for(seed, index, "published-demos"))
        return [int(i) for i in rng.choice(len(task.test), shots, replace=False)]
    excluded = set((same if same is not None else train_by_question(task)).get(task.test[index][0].strip(), ()))
    if len(task.train) - len(excluded) < shots:
        raise LtmError(f"--shots {shots} is more than the train split's {len(task.train) - len(excluded)} questions "
                       f"other than test question {index}")
    rng = np.random.default_rng(seed_for(seed, index, "demos"))
    drawn = rng.choice(len(task.train), shots + len(excluded), replace=False)
    return [int(i) for i in drawn if int(i) not in excluded][:shots]


@dataclass
class Prompt:
    text: str
    demos: list[int]  # those kept, oldest first
    dropped: int  # the oldest demonstrations dropped to fit
    tokens: int  # the prompt's tokens, BOS included
    fits: bool


def build_prompt(task: Task, index: int, demos: list[int], source: list, template: str, tokenizer, max_tokens: int,
                 window: int, overflow: str, protocol: str) -> Prompt:
    """The prompt of test question `index` with the demonstrations `demos` (items of `source`);
    refused (overflow refuse) or shortened from the oldest demonstration (truncate) when BOS +
    prompt + max_tokens exceed the window."""
    question = render(template, task.test[index][0], None)
    for dropped in range(len(demos) + 1):
        kept = demos[dropped:]
        text = "".join(render(template, *source[i]) for i in kept) + question
        tokens = 1 + len(tokenizer.encode(text))
        if tokens + max_tokens <= window:
            return Prompt(text, kept, dropped, tokens, True)
        if overflow == "refuse":
            raise LtmError(f"the {protocol} prompt of test question {index} is {tokens} tokens (BOS included) and "
                           f"--max-tokens {max_tokens} more: {tokens + max_tokens} > the model's window of {window} "
                           f"tokens (block_size + 1); use fewer --shots, a smaller --max-tokens, or --overflow truncate "
                           f"(drops the oldest demonstrations)")
    return Prompt(text, [], len(demos), tokens, False)


__all__ = ["CLEAN", "PUBLISHED", "Prompt", "build_prompt", "demonstrations", "seed_for", "train_by_question"]
