"""Issue 22's picture from a topics study's study.json: per self-attention window W, the LTM's best
honest bound and its same-window AR twin (each seed a dot, the mean a line), the twin's exact
floor (the best AR seeing the same receptive field) and the true NLL.

    python bench/study/topics_w_plot.py STUDY/study.json docs/results/issue22/topics_small/w_plot.png
"""
from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(study_json: str, out: str) -> None:
    rows = json.load(open(study_json))["rows"]
    points = list(dict.fromkeys(r["point"] for r in rows))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label, color in (("best_bound", "LTM, best honest bound", "C2"), ("ar_nll", "AR twin (exact)", "C0")):
        means = []
        for i, p in enumerate(points):
            ys = [r[key] for r in rows if r["point"] == p]
            ax.scatter([i] * len(ys), ys, color=color, s=12)
            means.append(sum(ys) / len(ys))
        ax.plot(range(len(points)), means, color=color, label=label)
    floors = [next(r["best_window_nll"] for r in rows if r["point"] == p) for p in points]
    ax.plot(range(len(points)), floors, color="black", linestyle="--", linewidth=1, label="twin's floor (best window AR)")
    ax.axhline(rows[0]["true_nll"], color="grey", linestyle=":", label="true NLL")
    ax.set_xticks(range(len(points)), points)
    ax.set_xlabel("self-attention window")
    ax.set_ylabel("nats/token (val)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
