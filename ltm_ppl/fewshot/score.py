"""Scoring of few-shot answers: the normalised final answer, exact and substring matches, pass@k
and the 95% intervals. Pure functions of text and counts (no model), so the tests check them by hand.

- The final answer of a text is what follows its last `####` (GSM8K's marker), else the whole text.
- Normalised: the last number in it (commas between digit groups dropped, compared as a decimal:
  "72", "72.0" and "The answer is 72." agree), else the stripped string; None when empty.
- pass@k is Chen et al. (2021)'s unbiased estimator from n samples with c correct:
  1 - C(n - c, k) / C(n, k), computed as a product (no huge binomials).
"""
from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

import numpy as np

NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])|-?\.\d+")
BOOTSTRAP_RESAMPLES = 1000
WILSON = "Wilson score, 95%"
BOOTSTRAP = f"bootstrap over questions, {BOOTSTRAP_RESAMPLES} resamples, percentile 95%"


def final_answer(text: str) -> str:
    """What follows the last `####` (GSM8K's marker of the final answer), else the text; stripped."""
    return text.rpartition("####")[2].strip() if "####" in text else text.strip()


def normalise(text: str):
    """The comparable final answer: ("number", Decimal) of its last number, ("text", stripped
    string) when it has none, or None when nothing is left."""
    answer = final_answer(text)
    numbers = NUMBER.findall(answer)
    if numbers:
        try:
            return "number", Decimal(numbers[-1].replace(",", ""))
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
            pass
    return ("text", answer) if answer else None


def shown(value) -> str | None:
    """A normalised answer for the JSONL: the number written plainly ("1234", "0.5"), or the string."""
    if value is None:
        return None
    kind, v = value
    if kind == "number":
        text = format(v.normalize(), "f")
        return "0" if text in ("-0", "0") else text
    return v


def exact_match(prediction: str, gold) -> bool:
    """The prediction's normalised final answer equals the gold one (numbers compared as numbers)."""
    return gold is not None and normalise(prediction) == gold


def substring_match(prediction: str, gold_text: str) -> bool:
    """The published protocol's test: the gold final answer, as written, appears anywhere in the text."""
    answer = final_answer(gold_text)
    return bool(answer) and answer in prediction


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(per_question, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile 95% interval of the mean of per-question values, questions resampled with
    replacement (seeded: the same numbers every time)."""
    values = np.asarray(per_question, dtype=np.float64)
    if values.size == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    means = values[rng.integers(values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


__all__ = ["BOOTSTRAP", "WILSON", "bootstrap", "exact_match", "final_answer", "normalise", "pass_at_k", "shown",
           "substring_match", "wilson"]
