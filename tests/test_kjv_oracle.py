"""bench/kjv_oracle.py (issue 22's oracle probe) at a tiny size: the probe's mixture likelihood is
log (1/K) sum_l p(x | l) of its per-label likelihoods, each of those is the decoder's likelihood at
that label's embedding, the mixture never costs more than log(K)/N over the true label, the probe
starts as its twin, and the twin is trained exactly as `--inference none` trains it."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import load_bench

from ltm_ppl.config import ModelConfig, RunConfig, TrainConfig
from ltm_ppl.data import build_tokenizer

TINY = ModelConfig(n_layer=1, n_head=2, d_model=16, n_z=2, block_size=32, attention_window=4)


@pytest.fixture(scope="module")
def oracle():
    return load_bench("kjv_oracle")


@pytest.fixture(scope="module")
def small(oracle):
    """Every 30th KJV chapter (40 chapters of many books), byte tokens: books, streams, model config."""
    tokenizer = build_tokenizer("bytes")
    books, streams = oracle.labelled_streams(tokenizer, oracle.kjv_chapters()[::30])
    return books, streams, dataclasses.replace(TINY, vocab_size=tokenizer.vocab_size)


def test_window_labels_take_the_majority_book_of_the_predicted_tokens(oracle):
    stacked = np.zeros((2, 6, 2), np.int64)
    stacked[0, :, 1] = [5, 1, 1, 2, 2, 2]  # the conditioning token's book (5) does not count
    stacked[1, :, 1] = [3, 3, 3, 3, 3, 3]
    _, label, mixed = oracle.window_labels(stacked)
    assert label.tolist() == [2, 3] and mixed.tolist() == [True, False]


def test_labelled_stream_is_eot_chapter_eot_with_each_chapter_labelled_by_its_book(oracle, small):
    books, streams, _ = small
    tokenizer = build_tokenizer("bytes")
    chapters = oracle.kjv_chapters()[::30]
    train = streams["train"]
    first = tokenizer.encode(chapters[0][1])
    assert train[0, 0] == tokenizer.eot_id and train[1 : 1 + len(first), 0].tolist() == first
    assert train[len(first) + 1, 0] == tokenizer.eot_id
    assert set(train[1 : len(first) + 2, 1].tolist()) == {books.index(chapters[0][0])}
    assert len(books) == len({b for b, _ in chapters}) > 10
    assert len(streams["val"]) > 0


def test_mixture_is_the_logsumexp_of_the_per_label_likelihoods_minus_log_k(oracle, small):
    books, streams, model = small
    t = TrainConfig(iters=3, batch_size=4, seed=0)
    probe = oracle.train(dataclasses.replace(model, latent=True), t, streams["train"], len(books))
    out = oracle.evaluate(probe["decoder"], probe["embedding"], streams["val"], model.block_size, 5, len(books), batch=2)
    per_label = out["loglik"]
    k, n = len(books), model.block_size
    assert per_label.shape == (5, k)
    # one entry by hand: window 3 (second batch) at label 7, straight from the decoder's logits
    window = torch.from_numpy(oracle.windows(streams["val"], [3], n)[..., 0])
    with torch.no_grad():
        z = probe["embedding"].weight[7].view(1, model.n_z, model.d_model)
        logp = torch.log_softmax(probe["decoder"](window[:, :-1], z).double(), -1)
        by_hand = logp[0, torch.arange(n), window[0, 1:]].sum().item()
    assert per_label[3, 7] == pytest.approx(by_hand, abs=1e-3)
    assert np.ptp(per_label, axis=1).min() > 0  # the labels say something after training
    mixture = oracle.mixture_loglik(per_label)
    for row, value in zip(per_label, mixture):
        top = max(row)
        assert value == pytest.approx(top + math.log(math.fsum(math.exp(x - top) for x in row)) - math.log(k), abs=1e-9)
    true = per_label[np.arange(5), out["label"]]
    # the mixture pays at most log K over the true label, per window
    assert np.all(-mixture / n <= -true / n + math.log(k) / n + 1e-9)
    assert np.all(mixture <= per_label.max(axis=1))


def test_the_bench_record_reports_what_its_windows_say(oracle, small):
    books, streams, model = small
    r = oracle.run_seed(model, TrainConfig(iters=2, batch_size=4, seed=1), streams, len(books), 4)
    w, n, k = r["per_window"], model.block_size, len(books)
    mixture = -oracle.mixture_loglik(np.array(w["probe_loglik_per_label"]))
    assert np.allclose(mixture, w["probe_mixture_nll"])
    assert r["nats_per_token"]["probe_mixture"] == pytest.approx(sum(w["probe_mixture_nll"]) / (4 * n))
    assert r["nats_per_token"]["twin"] == pytest.approx(sum(w["twin_nll"]) / (4 * n))
    assert r["probe_mixture_minus_twin"]["nats_per_token"] == pytest.approx(
        r["nats_per_token"]["probe_mixture"] - r["nats_per_token"]["twin"], abs=1e-9)
    assert r["log_labels_per_token"] == pytest.approx(math.log(k) / n)
    assert all(m <= t + math.log(k) + 1e-9 for m, t in zip(w["probe_mixture_nll"], w["probe_true_label_nll"]))


def test_the_probe_starts_as_its_twin(oracle, small):
    books, streams, model = small
    r = oracle.run_seed(model, TrainConfig(iters=0, batch_size=4, seed=2), streams, len(books), 3)
    per_label = np.array(r["per_window"]["probe_loglik_per_label"])
    twin = -np.array(r["per_window"]["twin_nll"])
    assert np.allclose(per_label, twin[:, None], atol=1e-4)
    assert r["nats_per_token"]["probe_mixture"] == pytest.approx(r["nats_per_token"]["twin"], abs=1e-6)


def test_the_twin_trains_as_inference_none_does(oracle, small):
    """Same init, batches, AdamW groups, schedule and clip as the project's `none` method."""
    from ltm_ppl.data import train_batch
    from ltm_ppl.inference import create

    books, streams, model = small
    t = TrainConfig(iters=3, batch_size=4, seed=0)
    twin = oracle.train(dataclasses.replace(model, latent=False), t, streams["train"], len(books))
    cfg = RunConfig()
    cfg.model = dataclasses.replace(model, latent=False)
    cfg.train = dataclasses.replace(cfg.train, iters=3, batch_size=4, seed=0, device="cpu")
    cfg.inference.method = "none"
    project = create(cfg)
    for it in range(3):
        project.step(train_batch(streams["train"], model.block_size, 4, 0, it)[..., 0])
    mine = twin["decoder"].state_dict()
    for name, value in project.decoder.state_dict().items():
        assert torch.allclose(mine[name], value, atol=1e-6), name


def test_unigram_probe_is_the_projects_unigram_and_its_book_mixture(oracle, small):
    from ltm_ppl.evaluate import unigram_bound

    books, streams, model = small
    u = oracle.unigram_probe(streams, len(books), model.vocab_size, model.block_size, 6)
    expected = unigram_bound(streams["train"][:, 0], streams["val"][:, 0], model.vocab_size, model.block_size, 6)
    assert u["windows"] == 6 and u["global"] == pytest.approx(expected["nll_per_token"], rel=1e-9)
    assert u["book_mixture"] <= u["book_true_label"] + math.log(len(books)) / model.block_size + 1e-12
    assert u["book_mixture_minus_global"]["nats_per_token"] == pytest.approx(u["book_mixture"] - u["global"], abs=1e-9)


def test_the_constant_label_control_has_one_label_and_nothing_to_sum_out(oracle):
    r = oracle.run(TINY, TrainConfig(iters=2, batch_size=4), [0], "bytes", max_windows=3, per_window=True,
                   constant_label=True)
    assert r["data"]["labels"] == 1 and r["data"]["constant_label"] is True
    w = r["results"][0]
    assert np.array(w["per_window"]["probe_loglik_per_label"]).shape == (3, 1) and set(w["per_window"]["label"]) == {0}
    assert w["nats_per_token"]["probe_mixture"] == w["nats_per_token"]["probe_true_label"]
    assert r["results"][0]["log_labels_per_token"] == 0.0
