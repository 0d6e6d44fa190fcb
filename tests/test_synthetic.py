"""builtin:topics and builtin:functions (data/synthetic.py): deterministic, what their law says,
read by the bytes tokenizer as whole documents in whole windows, and refused by name when wrong."""
from __future__ import annotations

import itertools
import math
import re
from collections import Counter

import numpy as np
import pytest
from helpers import run_cli
from test_cli import assert_one_line_error

from ltm_ppl.data import build_tokenizer, load_corpus, split_tokens
from ltm_ppl.data.synthetic import ALPHABET, generate
from ltm_ppl.data.truth import stream_documents
from ltm_ppl.errors import LtmError


def test_the_default_corpora_and_their_documented_defaults():
    topics = load_corpus("builtin:topics")
    assert topics.spec == "builtin:topics?k=16&v=64&len=255&docs=5000&alpha=0.1&seed=0"
    assert {s: len(d) for s, d in topics.splits.items()} == {"train": 4500, "val": 250, "test": 250}
    docs = [d for split in topics.splits.values() for d in split]
    assert all(len(d) == 255 and set(d) <= set(ALPHABET[:64]) for d in docs)
    functions = load_corpus("builtin:functions")
    assert functions.spec == "builtin:functions?inputs=8&outputs=8&pairs=64&docs=5000&seed=0"
    pair = "[a-h]>[0-7]"
    assert all(re.fullmatch(f"{pair}( {pair}){{63}}", d) for d in functions.splits["val"])


def test_alphabet_is_printable_without_space_or_the_special_tokens_opening():
    assert len(ALPHABET) == len(set(ALPHABET)) == 93
    assert all(c.isprintable() and not c.isspace() for c in ALPHABET) and "<" not in ALPHABET


def test_generation_is_deterministic_and_more_documents_extend_it():
    a, b = generate("topics", "k=3&v=5&len=7&docs=40&seed=4"), generate("topics", "seed=4&docs=40&len=7&v=5&k=3")
    assert a[:3] == b[:3]  # same spec (in any order), fingerprint and documents
    more = generate("topics", "k=3&v=5&len=7&docs=60&seed=4")
    assert more[2][:40] == a[2] and more[1] != a[1]
    assert generate("topics", "k=3&v=5&len=7&docs=40&seed=5")[2] != a[2]
    f40, f60 = generate("functions", "docs=40&seed=2"), generate("functions", "docs=60&seed=2")
    assert f60[2][:40] == f40[2]


def _doc_frequencies(docs):
    counts = Counter(docs)
    return {d: c / len(docs) for d, c in counts.items()}


def test_topics_documents_follow_the_law():
    spec, _, docs, law = generate("topics", "k=2&v=2&len=3&docs=40000&alpha=0.7&seed=3")
    freq = _doc_frequencies(docs)
    for x in itertools.product(range(2), repeat=3):
        p = sum(law.start[k, x[0]] * law.trans[k, x[0], x[1]] * law.trans[k, x[1], x[2]] for k in range(2)) / 2
        text = "".join(law.symbols[i] for i in x)
        assert abs(freq.get(text, 0.0) - p) < 4 * math.sqrt(p * (1 - p) / len(docs)) + 1e-9, (text, p, freq.get(text))


def test_functions_documents_follow_the_law():
    _, _, docs, law = generate("functions", "inputs=2&outputs=2&pairs=2&docs=40000&seed=3")
    freq = _doc_frequencies(docs)
    exact: dict[str, float] = {}
    for f in itertools.product(range(2), repeat=2):
        for xs in itertools.product(range(2), repeat=2):
            text = " ".join(f"{'ab'[x]}>{f[x]}" for x in xs)
            exact[text] = exact.get(text, 0.0) + 1 / 16
    assert set(freq) <= set(exact)
    for text, p in exact.items():
        assert abs(freq.get(text, 0.0) - p) < 4 * math.sqrt(p * (1 - p) / len(docs)), (text, p, freq.get(text))


def test_the_bytes_tokenizer_reads_one_token_per_symbol_and_a_document_fills_a_window():
    corpus = load_corpus("builtin:topics?k=4&v=93&len=31&docs=40")
    tokenizer = build_tokenizer("bytes")
    for split in ("train", "val", "test"):
        tokens = np.asarray(split_tokens(corpus, split, tokenizer))
        docs = stream_documents(corpus.law, tokens, tokenizer.eot_id)  # EOT doc EOT ..., 31 symbols each
        assert len(docs) == len(corpus.splits[split])
    # window i of block 32 is exactly EOT + document i + EOT
    assert tokens[32] == tokens[0] == tokenizer.eot_id


@pytest.mark.parametrize("spec, fragment", [
    ("builtin:topics?k=0", "parameter k must be an integer from 1 to 1024, got '0'"),
    ("builtin:topics?v=94", "parameter v must be an integer from 1 to 93"),
    ("builtin:topics?alpha=0", "parameter alpha must be a number > 0"),
    ("builtin:topics?alpha=-1", "parameter alpha must be a number > 0"),
    ("builtin:topics?alpha=inf", "parameter alpha must be a number > 0"),
    ("builtin:topics?len=0", "parameter len must be an integer from 1"),
    ("builtin:topics?docs=0", "parameter docs must be an integer from 20"),
    ("builtin:topics?docs=2.5", "parameter docs must be an integer"),
    ("builtin:topics?kk=3", "unknown parameter 'kk' (known: k, v, len, docs, alpha, seed)"),
    ("builtin:topics?k", "parameter 'k' needs a value"),
    ("builtin:topics?k=2&k=3", "parameter k given twice"),
    ("builtin:topics?docs=10000000&len=65536", "at most"),
    ("builtin:functions?inputs=27", "parameter inputs must be an integer from 1 to 26"),
    ("builtin:functions?outputs=11", "parameter outputs must be an integer from 1 to 10"),
    ("builtin:functions?pairs=0", "parameter pairs must be an integer from 1"),
    ("builtin:functions?k=3", "unknown parameter 'k'"),
    ("builtin:kjv?seed=1", "builtin:kjv takes no parameters"),
    ("builtin:topic", "unknown built-in corpus"),
])
def test_bad_parameters_are_one_error_line_naming_them(spec, fragment):
    with pytest.raises(LtmError, match=re.escape(fragment)):
        load_corpus(spec)


@pytest.mark.parametrize("spec, fragment", [
    ("builtin:topics?k=0", "parameter k must be an integer from 1 to 1024"),
    ("builtin:topics?alpha=0", "parameter alpha must be a number > 0"),
    ("builtin:topics?kk=1", "unknown parameter 'kk'"),
    ("builtin:functions?pairs=-1", "parameter pairs must be an integer from 1"),
])
def test_bad_parameters_through_the_cli_write_nothing(tmp_path, tiny_toml, spec, fragment):
    out = tmp_path / "run"
    assert_one_line_error(run_cli("fit", "--config", tiny_toml, "--data", spec, "--out", out), fragment)
    assert not out.exists()
