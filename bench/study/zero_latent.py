"""The decoder of an LTM run read at z = 0 (where cross-attention adds nothing: no biases, values
W_v z = 0, so it is the AR architecture) and at z = loc + eps of the run's start (prior draws for init = prior): NLL per token of the
reconstruction term alone, on the first val windows. Not a bound on anything; a diagnosis of
whether the decoder reads z at all and of how good its self-attention / MLP part is on its own.

    python bench/study/zero_latent.py RUN [RUN ...] [--windows 32]
"""
from __future__ import annotations

import argparse
import json

from pathlib import Path

import numpy as np

from ltm_ppl.run import read_config
from ltm_ppl.data import load_corpus, split_tokens
from ltm_ppl.evaluate import eval_batches
from ltm_ppl.eval_runs import open_run


def zero_and_prior_nll(run: str, windows: int, batch_size: int = 8, seed: int = 0) -> dict:
    trained, _ = read_config(Path(run))
    # init "published" starts q at mu = 0.01 N(0, 1): read at steps = 0 from the prior instead, so
    # that noise 0 is z = 0 exactly (the fast loop never runs here, so nothing else changes).
    o = open_run(run, {"inference.init": "prior"} if trained.inference.init == "published" else None)
    m = o.cfg.model
    if o.cfg.inference.init == "amortized":  # steps=0 starts at the encoder's mean, not at z = 0
        return {"run": run, "windows": windows, "nll_at_z0": None, "nll_at_prior_draw": None,
                "note": "init amortized: not measured (z would be the encoder's mean)"}
    tokens = split_tokens(load_corpus(o.cfg.data.data), "val", o.tokenizer)
    rng = np.random.default_rng(seed)
    zero = prior = n = 0.0
    with o.inference.rng_scope(seed):
        for batch in eval_batches(tokens, m.block_size, batch_size, windows):
            shape = (1, batch.shape[0], m.n_z, m.d_model)  # steps=0: q is the prior, z = 0 + 1 * eps
            zero -= float(o.inference.bound(batch, steps=0, noise=np.zeros(shape, np.float32))["loglik"].sum())
            prior -= float(o.inference.bound(batch, steps=0, noise=rng.standard_normal(shape).astype(np.float32))["loglik"].sum())
            n += batch.shape[0] * (batch.shape[1] - 1)
    return {"run": run, "windows": windows, "nll_at_z0": zero / n, "nll_at_prior_draw": prior / n}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--windows", type=int, default=32)
    args = parser.parse_args()
    for run in args.runs:
        print(json.dumps(zero_and_prior_nll(run, args.windows)))


if __name__ == "__main__":
    main()
