"""The text view of a few-shot result (`ltm fewshot`): what was asked, one line per figure with its
95% interval and how the interval was computed, then the notes. The JSON is the record itself."""
from __future__ import annotations

from .fewshot import FewshotResult


def fewshot_text(result: FewshotResult) -> str:
    """The lines `ltm fewshot` prints, without a final newline."""
    r = result
    lines = [f"few-shot {r.task}: {r.shots} shots, {r.scored} questions scored of {r.test_size} in test "
             f"(train {r.train_size}); {r.backend} / {r.inference} (trained with {r.trained_with}), "
             f"{r.steps} inference steps, seed {r.seed}",
             f"{'protocol':<10} {'decoding':<8} {'metric':<20} {'value':>7}  {'95% interval':<17} interval"]
    for row in r.rows:
        lines.append(f"{row['protocol']:<10} {row['decoding']:<8} {row['metric']:<20} {row['value']:>7.3f}  "
                     f"[{row['low']:.3f}, {row['high']:.3f}]   {row['interval']}")
    lines += [f"  {row['protocol']}: {row['label']}" for row in r.rows if row["protocol"] == "published"]
    lines += [f"note: {note}" for note in r.notes]
    lines.append(f"every question, prompt, sample and verdict: {r.out}")
    return "\n".join(lines)


__all__ = ["fewshot_text"]
