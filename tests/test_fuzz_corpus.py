"""Fuzzing the corpus loaders: random bytes, random JSON lines, odd encodings, directories of
files. Every case ends in documents that tokenize, or one LtmError; the corpus is never changed."""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ltm_ppl.data import build_tokenizer, load_corpus, split_tokens
from ltm_ppl.data.splits import SPLITS
from ltm_ppl.errors import LtmError

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def digest(root: Path) -> dict:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def exercise(path: Path, tokenizer: str = "bytes") -> object:
    """What `fit` does with a corpus up to the model: load, split, train or build the tokenizer,
    tokenize every split. Returns the token counts or the LtmError."""
    before = digest(path)
    try:
        corpus = load_corpus(str(path))
        texts = corpus.documents("train")
        tok = build_tokenizer(tokenizer, texts, corpus.fingerprint)
        return {split: len(split_tokens(corpus, split, tok)) for split in SPLITS if any(d.strip() for d in corpus.splits[split])}
    except LtmError as exc:
        assert "\n" not in str(exc)
        return exc
    finally:
        assert digest(path) == before


text_like = st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
encodings = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32", "latin-1", "cp1252", "shift_jis"])


@FUZZ
@given(content=text_like, suffix=st.sampled_from([".txt", ".jsonl", ".md"]))
def test_random_bytes_as_a_corpus_file(content, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"corpus{suffix}"
        path.write_bytes(content)
        exercise(path)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=6)
json_lines = st.one_of(
    st.dictionaries(st.sampled_from(["text", "title", "id"]), json_values, max_size=3).map(json.dumps),
    st.text(max_size=60).map(lambda t: json.dumps({"text": t})),
    st.text(max_size=40),  # not JSON at all
)


@FUZZ
@given(lines=st.lists(json_lines, max_size=25), ending=st.sampled_from(["\n", "\r\n"]))
def test_random_json_lines(lines, ending):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.jsonl"
        path.write_bytes(ending.join(lines).encode("utf-8", "surrogatepass"))
        exercise(path)


@FUZZ
@given(text=st.text(min_size=1, max_size=400), encoding=encodings)
def test_text_in_odd_encodings(text, encoding):
    try:
        content = text.encode(encoding)
    except UnicodeEncodeError:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_bytes(content)
        exercise(path)


@FUZZ
@given(files=st.lists(st.tuples(st.sampled_from(["a.txt", "b/c.txt", "d.TXT", "e.txt.bak", "f/g/h.txt"]), text_like), max_size=5))
def test_random_directories(files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "docs"
        root.mkdir()
        for name, content in files:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content)
        exercise(root)


@settings(max_examples=12, deadline=None)
@given(text=st.text(min_size=1, max_size=400))
def test_bpe_trains_on_any_text_or_refuses(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        exercise(path, "bpe:300")


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_non_utf8_corpus_is_one_error(tmp_path, encoding):
    path = tmp_path / "corpus.txt"
    path.write_bytes("Grüße aus Köln\n".encode(encoding) * 5)
    assert isinstance(exercise(path), LtmError)
