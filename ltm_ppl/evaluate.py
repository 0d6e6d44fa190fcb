"""Bounds on the log-likelihood of a token split, corpus-level, and the unigram reference."""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .data.windows import eval_batches, num_windows
from .distributed import world
from .errors import LtmError
from .noise import Rows

def iwae_terms(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IWAE_K, sampled-KL ELBO) per sequence from log weights [K, B] of the same draws.

    IWAE_K = logmeanexp_k w_k >= mean_k w_k (Jensen), with equality at K = 1.
    """
    K = log_weights.shape[0]
    top = log_weights.max(0)
    iwae = top + np.log(np.exp(log_weights - top).sum(0)) - math.log(K)
    return iwae, log_weights.mean(0)


def corpus_bound(inference, batches: Iterable[np.ndarray], steps: int, num_samples: int, seed: int = 0,
                 progress=None, kind: str = "elbo", per_window: bool = False, at_fast_noise: bool = False) -> dict:
    """A bound with fresh noise over the sequences of `batches` ([B, T + 1] each: T predicted
    items per sequence), for any object implementing protocol.Inference (the LTM's methods, or a
    method on an injected model).

    kind "elbo": the mean-field ELBO with analytic KL, estimated with `num_samples` draws.
    kind "iwae": IWAE_K with K = num_samples draws of the method's q, and the sampled-KL ELBO of the
    same draws beside it. nll_per_token is the corpus-level bound -sum_i B_i / sum_i T_i; the
    per-sequence mean of exp(-B_i / T_i) (the paper's figure) is reported under its own name.
    per_window: also "window_nll", -B_i of each sequence in order (nats; with several torch
    workers, gathered from their shares into window order on every worker), for paired comparisons
    on the same windows.
    at_fast_noise (kind "elbo"): the estimate reuses the eps of the fast steps (Inference.bound):
    eval --fixed-noise's labelled row, the reference's number, not a bound.
    """
    total = loglik = kl = sampled_elbo = 0.0
    n_tokens = n_seq = 0
    per_seq_ppl = []
    window_nll = []
    window_index = []  # the global position of each of this worker's windows
    offset = 0  # windows in the global batches before this one
    w = world()
    with inference.rng_scope(seed):
        for index, batch in enumerate(batches):
            # Each window's noise is keyed by (seed, global batch, row) and torch workers take
            # contiguous shares of every global batch: the sums match one worker's.
            share = _share(len(batch), w)
            inference.noise_rows = Rows(seed, index, share.start, len(batch))
            window_index.extend(range(offset + share.start, offset + share.stop))
            offset += len(batch)
            batch = batch[share]
            if share.stop == share.start:  # a short last batch leaves some workers nothing
                continue
            T = batch.shape[1] - 1
            if kind == "iwae":
                iwae, elbo = iwae_terms(inference.log_weights(batch, steps=steps, num_samples=num_samples))
                bound = iwae
                sampled_elbo += float(np.sum(elbo))
            else:
                # Only asked when wanted: an Inference written before the argument still bounds.
                extra = {"at_fast_noise": True} if at_fast_noise else {}
                terms = inference.bound(batch, steps=steps, num_samples=num_samples, **extra)
                bound = terms["loglik"] - terms["kl"]
                loglik += float(np.sum(terms["loglik"]))
                kl += float(np.sum(terms["kl"]))
            total += float(np.sum(bound))
            n_tokens += T * len(batch)
            n_seq += len(batch)
            per_seq_ppl.extend(np.exp(-bound / T).tolist())
            window_nll.extend((-np.asarray(bound, np.float64)).tolist())
            if progress is not None:
                progress(len(batch) * (w.size if w.runtime == "torch" else 1))
    inference.noise_rows = None
    if w.runtime == "torch" and w.size > 1:
        total, loglik, kl, sampled_elbo, n_tokens, n_seq, ppl_sum = _sum_over_workers(
            [total, loglik, kl, sampled_elbo, n_tokens, n_seq, float(np.sum(per_seq_ppl))])
        n_tokens, n_seq = int(round(n_tokens)), int(round(n_seq))
        per_seq_ppl = [ppl_sum / n_seq]
        if per_window:
            window_nll = _gather_windows(window_index, window_nll, offset)
    nll = -total / n_tokens
    if not math.isfinite(nll):
        raise LtmError(f"the bound is not finite ({kind} total {total}): the weights may have diverged")
    result = {
        "bound": kind,
        "nll_per_token": nll,
        "perplexity": math.exp(nll),
        "per_sequence_mean_perplexity": float(np.mean(per_seq_ppl)),
        "num_tokens": n_tokens,
        "num_sequences": n_seq,
        "steps": steps,
        "samples": num_samples,
    }
    if kind == "iwae":
        result["sampled_elbo_nll_per_token"] = -sampled_elbo / n_tokens
        result["kl_per_sequence"] = None  # IWAE has no analytic KL term; `--bound elbo` reports it
    else:
        result["reconstruction_nll_per_token"] = -loglik / n_tokens
        result["kl_per_sequence"] = kl / n_seq
    if per_window:
        result["window_nll"] = window_nll
    return result


def _share(count: int, w) -> slice:
    """This torch worker's contiguous rows of a global batch of `count` (all of it elsewhere)."""
    if w.runtime != "torch" or w.size == 1:
        return slice(0, count)
    bounds = np.linspace(0, count, w.size + 1).round().astype(int)
    return slice(int(bounds[w.rank]), int(bounds[w.rank + 1]))


def _sum_over_workers(values: list) -> list:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def _gather_windows(index: list[int], values: list[float], count: int) -> list[float]:
    """Every worker's per-window numbers in window order: each worker writes its windows'
    positions of a zero vector of all `count` windows and the sum over workers fills it (the
    shares are disjoint, so each entry is one worker's number plus exact zeros)."""
    full = np.zeros(count, np.float64)
    full[np.asarray(index, np.int64)] = values
    return _sum_over_workers(full.tolist())


def windows_bound(inference, tokens: np.ndarray, steps: int, num_samples: int, batch_size: int,
                  max_windows: int | None = None, seed: int = 0, progress=None, kind: str = "elbo",
                  per_window: bool = False, at_fast_noise: bool = False) -> dict:
    """corpus_bound over a token split's windows (the first `max_windows` when given)."""
    batches = eval_batches(tokens, inference.cfg.model.block_size, batch_size, max_windows)
    return corpus_bound(inference, batches, steps, num_samples, seed=seed, progress=progress, kind=kind,
                        per_window=per_window, at_fast_noise=at_fast_noise)


# Two-sided 95% quantiles of Student's t with 1..30 degrees of freedom; beyond, the Cornish-Fisher
# expansion about the normal quantile (error < 1e-4 there).
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (a 95% two-sided interval)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_interval(values) -> dict:
    """Mean of independent values, its standard error sd / sqrt(n) (sd with n - 1) and the 95%
    t interval mean +- t_{n-1} se; resolved: the interval excludes 0. One value: se and interval
    None (JSON null), not resolved; all values equal: zero width, resolved only when they are not 0."""
    x = np.asarray(values, np.float64)
    n = len(x)
    mean = float(x.mean()) if n else None
    if n < 2:
        return {"mean": mean, "se": None, "ci_low": None, "ci_high": None, "n": n, "resolved": False}
    se = float(x.std(ddof=1) / math.sqrt(n))
    half = t_quantile_975(n - 1) * se
    low, high = mean - half, mean + half
    return {"mean": mean, "se": se, "ci_low": low, "ci_high": high, "n": n, "resolved": bool(low > 0 or high < 0)}


def paired_difference(baseline_window_nll, other_window_nll, tokens_per_window: int) -> dict:
    """other minus baseline in nats/token, paired over the same windows: d_i = (NLL_i(other) -
    NLL_i(baseline)) / tokens per window; with every window predicting as many tokens, mean d_i is
    exactly the difference of the corpus-level numbers. mean_interval of the d_i, keys renamed:
    nats_per_token, se, ci_low, ci_high, windows, resolved."""
    a = np.asarray(baseline_window_nll, np.float64)
    b = np.asarray(other_window_nll, np.float64)
    if a.shape != b.shape:
        raise LtmError(f"a paired difference needs the same windows ({len(a)} and {len(b)} given)")
    stats = mean_interval((b - a) / tokens_per_window)
    return {"nats_per_token": stats["mean"], "se": stats["se"], "ci_low": stats["ci_low"],
            "ci_high": stats["ci_high"], "windows": stats["n"], "resolved": stats["resolved"]}


def unigram_bound(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int, block_size: int,
                  max_windows: int | None = None) -> dict:
    """NLL per token of an add-one-smoothed unigram model of the train split, on exactly the tokens
    that corpus_bound predicts."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for start, stop in _chunks(len(train_tokens)):  # chunked: a split may exceed memory
        counts += np.bincount(np.asarray(train_tokens[start:stop]), minlength=vocab_size)
    log_p = np.log(counts / counts.sum())
    n = num_windows(len(eval_tokens), block_size)
    if max_windows is not None:
        n = min(n, max_windows)
    total = 0.0
    for start, stop in _chunks(n * block_size, offset=1):
        total += float(log_p[np.asarray(eval_tokens[start:stop])].sum())
    nll = -total / (n * block_size) if n else float("nan")
    return {"nll_per_token": nll, "perplexity": math.exp(nll), "num_tokens": n * block_size}


def _chunks(length: int, offset: int = 0, size: int = 1 << 20):
    for start in range(offset, offset + length, size):
        yield start, min(offset + length, start + size)
