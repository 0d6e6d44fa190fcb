"""data/truth.py against brute force: every stream of a tiny law enumerated with its probability,
each predictive computed as a ratio of sums over the streams that agree on what it conditions on."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ltm_ppl.data.synthetic import FunctionsLaw, TopicsLaw
from ltm_ppl.data.truth import (receptive_field, stream_documents, token_logprobs,
                                window_nlls)

EOT = 256


def tiny_topics(k=2, v=2, length=3, seed=1) -> TopicsLaw:
    rng = np.random.default_rng(seed)
    start = rng.dirichlet(np.full(v, 0.7), size=k)
    trans = rng.dirichlet(np.full(v, 0.7), size=(k, v))
    trans[0, 0] = [1.0] + [0.0] * (v - 1)  # a zero transition: -inf terms must not become NaN
    return TopicsLaw(k, v, length, 0.7, start, trans, "abcdefgh"[:v])


def topics_streams(law: TopicsLaw, n_docs: int):
    """Every stream of n_docs documents as byte tokens, with its probability."""
    docs, probs = [], []
    for x in itertools.product(range(law.v), repeat=law.length):
        p = sum(law.start[k, x[0]] * math.prod(law.trans[k, a, b] for a, b in zip(x, x[1:])) for k in range(law.k)) / law.k
        docs.append([ord(law.symbols[i]) for i in x])
        probs.append(p)
    return _concatenate(docs, probs, n_docs)


def functions_streams(law: FunctionsLaw, n_docs: int):
    docs, probs = [], []
    weight = 1.0 / (law.outputs ** law.inputs * law.inputs ** law.pairs)
    for f in itertools.product(range(law.outputs), repeat=law.inputs):
        for xs in itertools.product(range(law.inputs), repeat=law.pairs):
            text = " ".join(f"{law.input_symbols[x]}>{law.output_symbols[f[x]]}" for x in xs)
            docs.append(list(text.encode()))
            probs.append(weight)
    return _concatenate(docs, probs, n_docs)


def _concatenate(docs, probs, n_docs):
    # merge equal documents first (a map and its inputs often write the same text)
    merged: dict[tuple, float] = {}
    for d, p in zip(docs, probs):
        merged[tuple(d)] = merged.get(tuple(d), 0.0) + p
    streams, weights = [], []
    for combo in itertools.product(merged.items(), repeat=n_docs):
        tokens = [EOT]
        for doc, _ in combo:
            tokens += [*doc, EOT]
        streams.append(tokens)
        weights.append(math.prod(p for _, p in combo))
    return np.array(streams), np.array(weights)


def view_start(p: int, block: int, window: int | None) -> int:
    return 0 if window is None else max((p - 1) // block * block, p - window)


def brute_logprob(streams, weights, p: int, start: int) -> np.ndarray:
    """log p(x_p | x_start .. x_{p-1}) of every stream, by summing the law over all streams."""
    def conditional_mass(upto):
        _, inverse = np.unique(streams[:, start:upto], axis=0, return_inverse=True)
        inverse = inverse.ravel()
        return np.bincount(inverse, weights=weights)[inverse]
    return np.log(conditional_mass(p + 1) / conditional_mass(p))


def brute_blind_logprobs(streams, weights, block: int, window: int) -> np.ndarray:
    """log p(x_p | the window-R view's tokens) pooled over every window and place where the same
    tokens can be seen: the predictive of a model that knows no position but what it sees."""
    n = (streams.shape[1] - 1) // block
    targets = range(1, n * block + 1)
    views = [[tuple(s[view_start(p, block, window) : p]) for p in targets] for s in streams]
    num: dict = {}
    den: dict = {}
    for s, w, row in zip(streams, weights, views):
        for p, v in zip(targets, row):
            num[v, s[p]] = num.get((v, s[p]), 0.0) + w
            den[v] = den.get(v, 0.0) + w
    return np.array([[math.log(num[v, s[p]] / den[v]) for p, v in zip(targets, row)] for s, row in zip(streams, views)])


def check_against_brute_force(law, streams, weights, blocks, windows):
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    L = law.length
    n_tokens = streams.shape[1]
    expected = {}
    for block in blocks:
        n = (n_tokens - 1) // block
        for window in windows:
            ours = np.stack([token_logprobs(law, stream_documents(law, s, EOT), block, window, np.arange(1, n * block + 1))
                             for s in streams])
            brute = np.stack([brute_logprob(streams, weights, p, view_start(p, block, window)) for p in range(1, n * block + 1)], 1)
            np.testing.assert_allclose(ours, brute, rtol=1e-9, atol=1e-9, err_msg=f"block {block}, window {window}")
            expected[block, window] = float(-(weights[:, None] * ours).sum(0).sum())
            # the per-window sums are window_nlls' answer
            nlls = window_nlls(law, streams[0], EOT, block, window, position_known=True)
            np.testing.assert_allclose(nlls, -ours[0].reshape(n, block).sum(1), rtol=1e-12)
        # conditioning on more never costs more, in expectation: truth <= R <= R - 1
        ladder = [expected[block, None]] + [expected[block, w] for w in sorted((w for w in windows if w), reverse=True)]
        assert all(a <= b + 1e-12 for a, b in zip(ladder, ladder[1:])), (block, ladder)
        if block == L + 1:  # windows that start at document starts: full attention is the truth
            assert expected[block, block] == pytest.approx(expected[block, None], abs=1e-12)
            for window in (w for w in windows if w and w < block):  # and position-blind floors are exact
                ours = np.stack([token_logprobs(law, stream_documents(law, s, EOT), block, window, np.arange(1, n * block + 1),
                                                position_known=False) for s in streams])
                np.testing.assert_allclose(ours, brute_blind_logprobs(streams, weights, block, window), rtol=1e-9, atol=1e-9,
                                           err_msg=f"position-blind, window {window}")
                blind = float(-(weights[:, None] * ours).sum())
                assert expected[block, window] <= blind + 1e-12  # knowing positions never costs
                np.testing.assert_allclose(window_nlls(law, streams[0], EOT, block, window), -ours[0].reshape(n, block).sum(1))
    return expected


def test_topics_predictives_match_brute_force_for_every_window_and_block():
    law = tiny_topics()
    streams, weights = topics_streams(law, n_docs=3)
    expected = check_against_brute_force(law, streams, weights, blocks=(4, 3, 5), windows=(None, 1, 2, 3, 4, 5, 6))
    # the truth is the entropy of the documents: 3 H(doc) over the 12 predicted tokens
    doc_probs = []
    for x in itertools.product(range(2), repeat=3):
        doc_probs.append(sum(law.start[k, x[0]] * law.trans[k, x[0], x[1]] * law.trans[k, x[1], x[2]] for k in range(2)) / 2)
    doc_probs = np.array(doc_probs)
    entropy = -(doc_probs[doc_probs > 0] * np.log(doc_probs[doc_probs > 0])).sum()
    assert expected[4, None] == pytest.approx(3 * entropy, abs=1e-12)
    assert expected[4, 1] > expected[4, None] + 0.05  # the window costs something on this law


def test_three_topics_over_three_symbols_match_brute_force():
    law = tiny_topics(k=3, v=3, length=3, seed=2)
    streams, weights = topics_streams(law, n_docs=2)
    check_against_brute_force(law, streams, weights, blocks=(4, 3), windows=(None, 1, 2, 4))


def test_functions_predictives_match_brute_force_across_documents():
    law = FunctionsLaw(2, 2, 2, "ab", "01")
    streams, weights = functions_streams(law, n_docs=2)
    check_against_brute_force(law, streams, weights, blocks=(8, 5, 6), windows=(None, 1, 2, 3, 4, 5, 6, 8))


def test_functions_pairs_cut_by_the_view_match_brute_force():
    # three inputs, two outputs: the hidden input of a cut pair may be seen, x, or another
    law = FunctionsLaw(3, 2, 4, "abc", "01")
    streams, weights = functions_streams(law, n_docs=1)
    check_against_brute_force(law, streams, weights, blocks=(16, 9), windows=(None, 2, 3, 5, 6, 7, 9, 10, 16))


def test_receptive_field_of_stacked_windowed_layers():
    assert receptive_field(2, 0, 256) == 256
    assert receptive_field(2, 1, 256) == 1
    assert receptive_field(2, 4, 256) == 7
    assert receptive_field(4, 128, 256) == 256
