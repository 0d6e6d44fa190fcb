"""Zero-shot perplexity by the published protocol (`ltm eval --protocol published`), beside the
honest bounds of the same blocks.

The published zero-shot scripts (mingluzhao/Latent-Thought-LM at commit 3217b8c,
sampling/zero-shot-ppl/utils_ppl_0shot_update.py `get_dataset`, sample_owt_0shot.py and
sample_our_gpt_0shot.py) prepare a corpus so:

- each document is detokenised (PTB: `ptb_detokenizer`; the datasets it has no rule for: as is),
  tokenised without special tokens, and followed by one EOS (`t + [EOS]`); no BOS anywhere (the
  `_group_texts` that adds BOS and EOS is never called);
- `group_texts` joins the documents and cuts fixed blocks of `block_size` tokens, dropping the
  remainder; it runs under `datasets.map(batched=True, num_proc=8)`, so the join and the drop are
  per map batch: 1000 documents (map's default) within each of 8 contiguous shards;
- each block is scored alone (batch 1): x = block[:-1], y = block[1:], N = block_size - 1
  predicted tokens; the LTM figure is exp((cross-entropy + KL) / N) at q fitted to one eps that
  also scores it, the AR figure exp(mean cross-entropy); the reported number is the mean over
  blocks of these (a per-sequence mean, not a corpus-level exp).

Here the blocks are cut the same way (the run's block size and tokenizer) and the same blocks get
the published figure, the honest corpus-level ELBO (fresh noise), IWAE_K and, for a run without a
latent, the exact NLL.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, fields
from itertools import chain

import numpy as np

from .data import load_corpus
from .errors import LtmError
from .checks import require_steps
from .eval_runs import (EXACT_LABEL, HONEST_LABEL, OpenRun, check_eval_memory, check_eval_options, check_seed,
                        no_progress, open_run)
from .evaluate import corpus_bound, paired_difference
from .flops import decoder_forward
from .inference import descriptor, training_flops_per_token
from .run import load_inference

PROTOCOLS = ("honest", "published")
# datasets.map's defaults in get_dataset's grouping call: the join and the drop happen per map batch.
PUBLISHED_NUM_PROC = 8
PUBLISHED_MAP_BATCH = 1000

PUBLISHED_FIXED_LABEL = ("published per-sequence figure: mean over blocks of exp[(cross-entropy + KL) / N], q fitted "
                         "to one eps that also scores it; NOT a bound")
PUBLISHED_FRESH_LABEL = ("published per-sequence averaging: mean over blocks of exp(-ELBO / N), fresh noise (this "
                         "method has no fixed-noise loop); not the corpus-level bound")
PUBLISHED_EXACT_LABEL = "published per-sequence figure: mean over blocks of exp(NLL / N), exact (no latent)"
IWAE_LABEL = "honest bound, IWAE_K, fresh noise"


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise LtmError(f"--protocol must be {' or '.join(PROTOCOLS)}, got {protocol!r}")


def ptb_detokenizer(x: str) -> str:
    """utils_ppl_0shot_update.py's `ptb_detokenizer`, line for line."""
    x = x.replace(" 's", "'s")
    x = x.replace("s ' ", "s' ")
    x = x.replace(" n't", "n't")
    x = x.replace(" \n ", "\n")
    x = x.replace("\\/", "/")
    for _ in range(10):
        x = x.replace(" N ", " 1 ")
    x = x.replace("$ 1", "$1")
    x = x.replace("# 1", "#1")
    x = x.replace("<unk>", "?")
    return x


# The published detokenisers of the corpora ltm-ppl ships (get_dataset picks one by dataset name).
DETOKENIZERS = {"builtin:ptb": ("ptb_detokenizer", ptb_detokenizer)}


def map_batches(n_documents: int) -> list[range]:
    """The documents each `group_texts` call sees: datasets.map(num_proc=8) cuts the rows into 8
    contiguous shards (the first n % 8 one longer; fewer shards than 8 rows: one per row), and
    batched=True hands each shard to the function 1000 rows at a time."""
    shards = min(PUBLISHED_NUM_PROC, n_documents)
    groups, start = [], 0
    for index in range(shards):
        size = n_documents // shards + (1 if index < n_documents % shards else 0)
        for lo in range(start, start + size, PUBLISHED_MAP_BATCH):
            groups.append(range(lo, min(start + size, lo + PUBLISHED_MAP_BATCH)))
        start += size
    return groups


def published_blocks(documents: list[list[int]], eot_id: int, block_size: int) -> tuple[np.ndarray, int, int]:
    """(blocks [n, block_size], tokens with one EOS after each document, tokens dropped): each map
    batch's documents joined, EOS after each, cut into blocks, its remainder dropped."""
    blocks, total, dropped = [], 0, 0
    for group in map_batches(len(documents)):
        joined = list(chain.from_iterable(documents[i] + [eot_id] for i in group))
        kept = len(joined) // block_size * block_size
        total += len(joined)
        dropped += len(joined) - kept
        if kept:
            blocks.append(np.asarray(joined[:kept], np.int64).reshape(-1, block_size))
    out = np.concatenate(blocks) if blocks else np.zeros((0, block_size), np.int64)
    return out, total, dropped


@dataclass(frozen=True)
class ZeroShotResult:
    """What `ltm eval --protocol published` measured on the published blocks; `to_dict()` is the
    `--json` object (the published figure and the honest numbers at the top level, every row
    under `rows`), report.zeroshot_text the text. Rows are evaluate.corpus_bound's objects plus
    `label` (and `block_nll` on the honest / exact and published rows: -bound or NLL of each
    block, nats)."""
    rows: list[dict]
    protocol: str
    run: str
    backend: str
    inference: str
    trained_with: str
    split: str
    data: str
    tokenizer: str
    detokenizer: str | None
    block_size: int
    documents: int
    corpus_tokens: int  # the split's tokens with one EOS after each document
    dropped_tokens: int  # each map batch's remainder
    blocks: int  # all blocks of the split; the rows cover the first num_sequences of them
    predicted_per_block: int
    steps: int | None
    samples: int
    exact: bool
    published_noise: str  # "fixed" (the published loop's eps), "fresh" or "exact"
    flops_per_token: float
    decoder_flops_per_token: float

    def row(self, label: str) -> dict | None:
        return next((r for r in self.rows if r["label"] == label), None)

    @property
    def published(self) -> dict:
        return next(r for r in self.rows if r.get("published"))

    @property
    def honest(self) -> dict:
        return self.row(EXACT_LABEL if self.exact else HONEST_LABEL)

    @property
    def iwae(self) -> dict | None:
        return self.row(IWAE_LABEL)

    def to_dict(self) -> dict:
        top = {"published_perplexity": self.published["per_sequence_mean_perplexity"],
               "published_label": self.published["label"],
               "nll_per_token": self.honest["nll_per_token"], "perplexity": self.honest["perplexity"],
               "num_blocks": self.honest["num_sequences"], "num_tokens": self.honest["num_tokens"]}
        if self.iwae is not None:
            top |= {"iwae_nll_per_token": self.iwae["nll_per_token"], "iwae_perplexity": self.iwae["perplexity"]}
        return {**top, **{f.name: getattr(self, f.name) for f in fields(self)}}


def zero_shot_blocks(opened: OpenRun, split: str, data: str | None) -> tuple[object, np.ndarray, int, int, int, str | None]:
    """(corpus, blocks, documents, tokens, dropped, detokenizer name) of the published protocol."""
    corpus = load_corpus(data or opened.cfg.data.data)
    name, detok = DETOKENIZERS.get(corpus.spec, (None, None))
    docs = corpus.documents(split)
    if detok is not None:
        docs = [detok(d) for d in docs]
    ids = opened.tokenizer.encode_batch(docs)
    B = opened.cfg.model.block_size
    blocks, total, dropped = published_blocks(ids, opened.tokenizer.eot_id, B)
    if len(blocks) == 0:
        raise LtmError(f"corpus {corpus.spec}: the {split} split has {total} tokens with an EOS after each of its "
                       f"{len(docs)} documents, fewer than one published block ({B} tokens) in every group of "
                       f"{PUBLISHED_MAP_BATCH} documents; use a longer corpus or a smaller model.block_size")
    return corpus, blocks, len(docs), total, dropped, name


def _batches(blocks: np.ndarray, batch_size: int):
    for start in range(0, len(blocks), batch_size):
        yield blocks[start:start + batch_size]


def zero_shot_run(opened: OpenRun, split: str = "val", data: str | None = None, steps: int | None = None,
                  samples: int = 1, batch_size: int | None = None, max_windows: int | None = None,
                  seed: int | None = None, progress=no_progress) -> ZeroShotResult:
    """The published zero-shot protocol on a run (module docstring): the blocks, the published
    per-sequence figure, and on the same blocks the honest corpus-level ELBO (fresh noise,
    `samples` draws), IWAE_K (K = samples) and, without a latent, the exact NLL. Everything is
    checked before any bound; progress(blocks) is entered once per row."""
    cfg = opened.cfg
    method = descriptor(cfg.inference.method)
    check_eval_options(samples, batch_size, max_windows)
    check_seed(seed)
    batch_size = batch_size or cfg.train.batch_size
    check_eval_memory(cfg, batch_size, samples, "iwae")
    corpus, blocks, n_docs, total, dropped, detok = zero_shot_blocks(opened, split, data)
    all_blocks = len(blocks)
    if max_windows:
        blocks = blocks[:max_windows]
    T = steps or cfg.inference.eval_steps
    seed = cfg.train.seed if seed is None else seed
    fitted = T if method.inner_steps else None

    def bound(inference, kind, S, label, at_fast_noise=False, per_window=False):
        with progress(len(blocks)) as advance:
            row = corpus_bound(inference, _batches(blocks, batch_size), T, S, seed=seed, progress=advance, kind=kind,
                               per_window=per_window, at_fast_noise=at_fast_noise)
        return row | {"label": label, "fitted_steps": fitted}

    rows = []
    if not method.latent:
        row = bound(opened.inference, "elbo", 1, EXACT_LABEL, per_window=True)
        rows.append(_with_block_nll(row))
        rows.append(_published_row(row, PUBLISHED_EXACT_LABEL))
        noise = "exact"
    else:
        honest = bound(opened.inference, "elbo", samples, HONEST_LABEL, per_window=True)
        rows.append(_with_block_nll(honest))
        rows.append(bound(opened.inference, "iwae", samples, IWAE_LABEL))
        if "fixed_noise" in method.reference_numbers:
            fixed_cfg = copy.deepcopy(cfg)
            fixed_cfg.inference.fixed_noise = True  # the published fast loop: one eps per block
            fixed = load_inference(opened.path, fixed_cfg)
            # The published script reuses its eps (num_samples draws of it) for the reported number.
            row = bound(fixed, "elbo", cfg.inference.num_samples, PUBLISHED_FIXED_LABEL, at_fast_noise=True,
                        per_window=True)
            noise = "fixed"
        else:  # the honest row's own blocks, averaged the published way
            row, noise = honest, "fresh"
        rows.append(_published_row(row, PUBLISHED_FIXED_LABEL if noise == "fixed" else PUBLISHED_FRESH_LABEL))
    return ZeroShotResult(
        rows=rows, protocol="published", run=str(opened.path), backend=cfg.train.backend, inference=cfg.inference.method,
        trained_with=opened.trained_method, split=split, data=corpus.spec, tokenizer=cfg.data.tokenizer,
        detokenizer=detok, block_size=cfg.model.block_size, documents=n_docs, corpus_tokens=total,
        dropped_tokens=dropped, blocks=all_blocks, predicted_per_block=cfg.model.block_size - 1,
        steps=fitted, samples=samples, exact=not method.latent, published_noise=noise,
        flops_per_token=training_flops_per_token(opened.trained_cfg), decoder_flops_per_token=decoder_forward(cfg.model))


def _with_block_nll(row: dict) -> dict:
    """corpus_bound's `window_nll` (-bound or NLL of each block, nats; None when several torch
    workers share the blocks) as `block_nll`."""
    out = {k: v for k, v in row.items() if k != "window_nll"}
    out["block_nll"] = row.get("window_nll")
    return out


def _published_row(row: dict, label: str) -> dict:
    """The published figure's row: corpus_bound's per-sequence mean of its blocks' exp(loss / N),
    with the per-block losses (`block_nll`) it is the mean of."""
    out = _with_block_nll(row)
    if out.get("reconstruction_nll_per_token") is not None:
        out["reconstruction_perplexity"] = math.exp(min(out["reconstruction_nll_per_token"], 700.0))
    return out | {"label": label, "published": True}


@dataclass(frozen=True)
class ZeroShotComparison:
    """`ltm compare --protocol published`: each run's ZeroShotResult on the same blocks, and each
    later run's honest (or exact) number minus the first's, paired over the blocks
    (evaluate.paired_difference; None where the per-block losses are not at hand)."""
    results: list[ZeroShotResult]
    paired: list[dict | None]

    def to_dict(self) -> dict:
        return {"protocol": "published", "runs": [r.to_dict() for r in self.results], "paired": self.paired}


def zero_shot_compare(runs: list[str], split: str = "val", data: str | None = None, steps: int | None = None,
                      samples: int = 1, max_windows: int | None = None, batch_size: int | None = None,
                      seed: int | None = None, progress=no_progress, overrides: dict | None = None) -> ZeroShotComparison:
    """The published zero-shot protocol on several runs (e.g. an LTM and its AR twin): the same
    blocks need the same tokenizer and block size, which is checked before any bound."""
    if len(runs) < 2:
        raise LtmError("ltm compare needs at least two runs")
    require_steps("--steps", steps)
    check_eval_options(samples, batch_size, max_windows)
    check_seed(seed)
    opened = [open_run(run, overrides) for run in runs]
    if len({o.tokenizer.fingerprint for o in opened}) > 1:
        raise LtmError("the runs use different tokenizers, so their published blocks differ")
    if len({o.cfg.model.block_size for o in opened}) > 1:
        raise LtmError("the runs have different block sizes, so their published blocks differ")
    data = data or opened[0].cfg.data.data
    results = [zero_shot_run(o, split, data, steps, samples, batch_size, max_windows, seed, progress) for o in opened]
    first = results[0].honest["block_nll"]
    paired = [None] + [paired_difference(first, r.honest["block_nll"], r.predicted_per_block)
                       if first is not None and r.honest["block_nll"] is not None else None for r in results[1:]]
    return ZeroShotComparison(results, paired)
