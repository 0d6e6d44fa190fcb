"""The four numbers (and the AR baselines) of the replication runs as a markdown table, from the
JSON that run_cpu.sh / run_default_cpu.sh leave in bench/replication/out/.

    python bench/replication/table.py paper     # or: default
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

OUT = Path(__file__).parent / "out"


def last_json(name: str) -> dict:
    return json.loads((OUT / name).read_text().strip().splitlines()[-1])


def main(which: str):
    prefix = "" if which == "paper" else "default-"
    fixed = last_json(f"{prefix}eval-fixed.json" if which == "default" else "eval-paper-fixed.json")
    iwae = last_json(f"{prefix}eval-iwae.json" if which == "default" else "eval-paper-iwae.json")
    honest, reference = fixed["rows"][0], fixed["rows"][1]
    rows = [
        ("honest bound (ELBO, fresh noise, corpus-level)", honest["nll_per_token"], honest["perplexity"], "bound"),
        (f"IWAE_{iwae['samples']} (corpus-level)", iwae["nll_per_token"], iwae["perplexity"], "bound"),
        ("reference: fixed-noise per-sequence figure", None, reference["per_sequence_mean_perplexity"], "NOT a bound"),
        ("reference: no-KL reconstruction perplexity", reference["reconstruction_nll_per_token"],
         reference["reconstruction_perplexity"], "NOT a bound, NOT a likelihood"),
    ]
    baselines = ["eval-ar-window.json", "eval-ar-full.json"] if which == "paper" else ["default-eval-ar.json"]
    for name in baselines:
        ar = last_json(name)
        label = "AR baseline (`none`), same 256 window" if "window" in name else "AR baseline (`none`), full attention"
        rows.append((label + ", exact", ar["nll_per_token"], ar["perplexity"], "exact log-likelihood"))
    print(f"{fixed['data']} [{fixed['split']}], first {fixed['num_sequences']} of {fixed['split_windows']} windows, "
          f"{fixed['num_tokens']} predicted tokens, {honest['steps']} fast steps; "
          f"KL {honest['kl_per_sequence']:.1f} nats/sequence ({honest['kl_per_sequence'] / (fixed['num_tokens'] / fixed['num_sequences']):.3f} nats/token)\n")
    print("| number | nats/token | perplexity | what it is |\n|---|---|---|---|")
    for label, nll, ppl, what in rows:
        nll_text = "-" if nll is None else f"{nll:.4f}"
        print(f"| {label} | {nll_text} | {ppl:.2f} | {what} |")
    print(f"\nunigram of the same tokens: {fixed['unigram_nll_per_token']:.4f} nats/token "
          f"(perplexity {fixed['unigram_perplexity']:.2f}); training FLOPs/token {fixed['flops_per_token']:.4g}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "paper")
