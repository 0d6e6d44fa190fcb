"""The headline table of docs/results.md: one row per LTM point at one test-time T, from a study's
study.json, with the decoder-at-z=0 NLL of bench/study/zero_latent.py beside it when given.

    python bench/study/headline.py STUDY/study.json [--steps 16] [--zero zero.jsonl]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _f(v, d=3):
    return "-" if v is None else f"{v:.{d}f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("study")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--zero", default=None, help="zero_latent.py output (JSON lines)")
    args = parser.parse_args()
    summary = json.loads(Path(args.study).read_text())
    zero = {}
    if args.zero:
        for line in Path(args.zero).read_text().splitlines():
            r = json.loads(line)
            zero[Path(r["run"]).name] = r["nll_at_z0"]
    head = ["point (change from base)", f"ELBO T={args.steps}", "IWAE_1", "IWAE_16", "IWAE_128", "AR twin", "AR full attn",
            "AR equal FLOPs", "best bound - AR", "KL/window", "KL/token", "vectors > 0.5", "active units", "in use",
            "decoder at z=0", "fit s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in summary["rows"]:
        if r["eval_steps"] != args.steps:
            continue
        change = ", ".join(f"{k.split('.')[-1]} = {v}" for k, v in r["settings"].items()) or "base"
        cells = [f"{r['point']} s{r['seed']} ({change})", _f(r["elbo"]), _f(r.get("iwae_1")), _f(r.get("iwae_16")), _f(r.get("iwae_128")),
                 _f(r["ar_nll"]), _f(r["ar_full_attention_nll"]), _f(r["ar_equal_flops_nll"]),
                 ("**" if r["margin_vs_ar"] < 0 else "") + _f(r["margin_vs_ar"]), _f(r["kl_per_window"], 2),
                 _f(r["kl_per_token"], 4), f"{r['share_vectors_above_0.5']:.2f}", f"{r['active_units']}/{r['num_units']}",
                 "yes" if r["latents_in_use"] else "no", _f(zero.get(f"{r['point']}-s{r['seed']}")),
                 _f(r["fit_seconds"], 0) + ("*" if r["fit_resumed"] else "")]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
