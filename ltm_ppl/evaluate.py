"""Bounds on the log-likelihood of a token split, corpus-level, and the unigram reference."""
from __future__ import annotations

import math

import numpy as np

from .data.windows import eval_batches, num_windows
from .errors import LtmError


# What q each method's reported ELBO uses, stated beside every number.
PROPOSALS = {
    "local": "per-sequence Gaussian fitted by fast steps",
    "amortized": "the encoder's Gaussian",
    "langevin": "diagonal Gaussian fitted to each sequence's Langevin draws",
    "none": "none (exact log-likelihood, no latent)",
}


def corpus_bound(inference, tokens: np.ndarray, steps: int, num_samples: int, batch_size: int,
                 max_windows: int | None = None, seed: int = 0, progress=None) -> dict:
    """ELBO with fresh noise over the split's windows (the first `max_windows` when given).

    nll_per_token is the corpus-level bound -sum_i ELBO_i / sum_i T_i; the per-sequence mean of
    exp(-ELBO_i / T_i) (the paper's figure) is reported beside it under its own name.
    """
    block = inference.cfg.model.block_size
    loglik = kl = 0.0
    n_tokens = n_seq = 0
    per_seq_ppl = []
    with inference.rng_scope(seed):
        for batch in eval_batches(tokens, block, batch_size, max_windows):
            terms = inference.bound(batch, steps=steps, num_samples=num_samples)
            loglik += float(np.sum(terms["loglik"]))
            kl += float(np.sum(terms["kl"]))
            n_tokens += terms["num_tokens"] * len(batch)
            n_seq += len(batch)
            per_seq_ppl.extend(np.exp(-(terms["loglik"] - terms["kl"]) / terms["num_tokens"]).tolist())
            if progress is not None:
                progress(len(batch))
    nll = -(loglik - kl) / n_tokens
    if not math.isfinite(nll):
        raise LtmError(f"the bound is not finite (log-likelihood {loglik}, KL {kl}): the weights may have diverged")
    return {
        "nll_per_token": nll,
        "perplexity": math.exp(nll),
        "reconstruction_nll_per_token": -loglik / n_tokens,
        "kl_per_sequence": kl / n_seq,
        "per_sequence_mean_perplexity": float(np.mean(per_seq_ppl)),
        "num_tokens": n_tokens,
        "num_sequences": n_seq,
    }


def unigram_bound(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int, block_size: int,
                  max_windows: int | None = None) -> dict:
    """NLL per token of an add-one-smoothed unigram model of the train split, on exactly the tokens
    that corpus_bound predicts."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    n = num_windows(len(eval_tokens), block_size)
    if max_windows is not None:
        n = min(n, max_windows)
    predicted = np.asarray(eval_tokens[1 : n * block_size + 1])
    nll = float(-log_p[predicted].mean())
    return {"nll_per_token": nll, "perplexity": math.exp(nll), "num_tokens": int(predicted.size)}
