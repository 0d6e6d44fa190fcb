"""Corpora of any size: shard formats, how shards map to documents and splits, the sharded token
cache (parallel build, manifest, checksums, reuse), lazy streams, the batch order, and bad input."""
import gzip
import hashlib
import json
import os
import sys

import numpy as np
import pytest
from helpers import run_cli

from ltm_ppl.data import build_tokenizer, load_corpus, split_tokens
from ltm_ppl.data import cache as C
from ltm_ppl.data import corpus_index as I
from ltm_ppl.data import order as O
from ltm_ppl.data.splits import split_documents
from ltm_ppl.data.stream import TokenStream
from ltm_ppl.data.windows import num_windows, train_batch
from ltm_ppl.errors import LtmError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("LTM_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("bytes")


def expected_stream(docs, split, tokenizer):
    """The stream as defined before sharding: EOT, then ids + EOT of each document of the split."""
    out = [tokenizer.eot_id]
    for doc in split_documents(docs)[split]:
        out += tokenizer.encode(doc) + [tokenizer.eot_id]
    return np.array(out)


def write_jsonl(path, texts, gz=False, blank_every=0):
    lines = []
    for i, text in enumerate(texts):
        lines.append(json.dumps({"text": text, "id": i}))
        if blank_every and i % blank_every == 0:
            lines.append("   ")
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)


def write_parquet(path, texts, row_group_size=None, column="text"):
    pq.write_table(pa.table({column: texts, "n": list(range(len(texts)))}), path, row_group_size=row_group_size)


def doc(i):
    return f"Document {i}: in the beginning.\nSecond line of {i}, caf\u00e9.\n"


# ---- the documents of each format, and the rules that place them in splits -------------------


def test_mixed_shards_are_documents_in_sorted_path_order(tmp_path, cache, tok):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(doc(0))  # one document
    write_jsonl(root / "b.jsonl", [doc(i) for i in range(1, 8)], blank_every=3)  # one per non-blank line
    write_jsonl(root / "c.jsonl.gz", [doc(i) for i in range(8, 15)], gz=True)
    write_parquet(root / "d.parquet", [doc(i) for i in range(15, 24)], row_group_size=4)  # one per row
    (root / "sub" / "e.txt").write_text(doc(24))
    (root / "notes.md").write_text("ignored: not a shard")
    corpus = load_corpus(str(root))
    docs = [doc(i) for i in range(25)]
    assert corpus.num_documents == 25
    assert corpus.splits == split_documents(docs)  # 25 >= 20: i % 20 == 18 val, 19 test
    assert corpus.splits["val"] == [doc(18)] and corpus.splits["test"] == [doc(19)]
    for split in ("train", "val", "test"):
        assert np.array_equal(np.asarray(split_tokens(corpus, split, tok)), expected_stream(docs, split, tok))


def test_single_files_of_every_format(tmp_path, cache):
    texts = [doc(i) for i in range(22)]
    write_jsonl(tmp_path / "x.jsonl.gz", texts, gz=True)
    write_parquet(tmp_path / "x.parquet", texts, row_group_size=5)
    (tmp_path / "x.txt").write_text("".join(texts))
    for name in ("x.jsonl.gz", "x.parquet"):
        assert load_corpus(str(tmp_path / name)).splits == split_documents(texts), name
    assert load_corpus(str(tmp_path / "x.txt")).splits == split_documents(["".join(texts)])  # one document: cut 90/5/5


def test_existing_corpora_keep_their_documents_fingerprint_and_tokens(tmp_path, cache, tok):
    """A single .txt, a directory of .txt files and a single .jsonl give the documents, splits,
    content hash (which keys the token cache) and token stream they gave before sharding."""
    single = tmp_path / "one.txt"
    single.write_text("".join(doc(i) for i in range(40)))
    folder = tmp_path / "txts"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(doc(i) * 30)
    jsonl = tmp_path / "c.jsonl"
    write_jsonl(jsonl, [doc(i) for i in range(41)])
    cases = {
        single: ([single.read_text()], hashlib.sha256(single.read_bytes())),
        folder: ([(folder / f"{i}.txt").read_text() for i in range(3)],
                 hashlib.sha256(b"".join(f"{i}.txt".encode() + b"\0" + (folder / f"{i}.txt").read_bytes() for i in range(3)))),
        jsonl: ([doc(i) for i in range(41)], hashlib.sha256(jsonl.read_bytes())),
    }
    for path, (docs, digest) in cases.items():
        corpus = load_corpus(str(path))
        assert corpus.fingerprint == digest.hexdigest(), path
        assert corpus.splits == split_documents(docs), path
        for split in ("train", "val"):
            assert np.array_equal(np.asarray(split_tokens(corpus, split, tok)), expected_stream(docs, split, tok)), path


# ---- the token cache ----------------------------------------------------------------------------


def test_parallel_tokenising_writes_the_same_stream_as_one_process(tmp_path, monkeypatch, tok):
    root = tmp_path / "corpus"
    root.mkdir()
    for k in range(3):
        write_jsonl(root / f"part-{k}.jsonl", [doc(30 * k + i) for i in range(30)])
    monkeypatch.setattr(I, "PIECE_BYTES", 600)  # several pieces per shard...
    monkeypatch.setattr(C, "JOB_BYTES", 1500)  # ...and several jobs, so workers interleave
    streams = {}
    for workers in (1, 2):
        monkeypatch.setenv("LTM_CACHE_DIR", str(tmp_path / f"cache-{workers}"))
        corpus = load_corpus(str(root))
        assert all(len(shard["pieces"]) > 2 for shard in corpus.index["shards"])  # workers start mid-file
        streams[workers] = {s: np.asarray(split_tokens(corpus, s, tok, workers=workers)) for s in ("train", "val", "test")}
        folder, manifest = C.token_cache(corpus, tok)
        assert len(manifest["splits"]["train"]["shards"]) > 3  # head + one per job
        C.verify_token_cache(folder)
    docs = [doc(i) for i in range(90)]
    for split in ("train", "val", "test"):
        assert np.array_equal(streams[1][split], streams[2][split])
        assert np.array_equal(streams[1][split], expected_stream(docs, split, tok))


def test_tokenize_workers_from_the_environment(tmp_path, cache, monkeypatch, tok):
    from ltm_ppl.data import tokenise

    path = tmp_path / "c.jsonl"
    write_jsonl(path, [doc(i) for i in range(25)])
    monkeypatch.setattr(I, "PIECE_BYTES", 300)
    monkeypatch.setattr(C, "JOB_BYTES", 500)  # several jobs
    monkeypatch.setenv("LTM_TOKENIZE_WORKERS", "0")
    with pytest.raises(LtmError, match="LTM_TOKENIZE_WORKERS must be a positive integer"):
        split_tokens(load_corpus(str(path)), "train", tok)
    monkeypatch.setenv("LTM_TOKENIZE_WORKERS", "2")  # a pool even for a tiny corpus: nothing runs here

    def not_here(*args):
        raise AssertionError("tokenised in the parent process")

    monkeypatch.setattr(tokenise, "run_job", not_here)
    stream = np.asarray(split_tokens(load_corpus(str(path)), "train", tok))
    assert np.array_equal(stream, expected_stream([doc(i) for i in range(25)], "train", tok))


def test_manifest_checksums_catch_damage_and_a_short_shard_is_rebuilt(tmp_path, cache, tok):
    path = tmp_path / "c.jsonl"
    write_jsonl(path, [doc(i) for i in range(25)])
    corpus = load_corpus(str(path))
    before = np.asarray(split_tokens(corpus, "train", tok))
    folder, manifest = C.token_cache(corpus, tok)
    assert manifest["corpus_sha256"] == corpus.fingerprint and manifest["tokenizer_sha256"] == tok.fingerprint
    shard = folder / manifest["splits"]["train"]["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(LtmError, match="checksum mismatch"):
        C.verify_token_cache(folder)
    shard.write_bytes(bytes(data[:-2]))  # truncated: the cheap size check on load rebuilds it
    assert np.array_equal(np.asarray(split_tokens(corpus, "train", tok)), before)
    C.verify_token_cache(folder)
    assert not list(cache.glob(".tokens-*"))  # no build folder left behind


def test_dead_build_folders_are_removed_and_live_ones_kept(tmp_path, cache, tok):
    path = tmp_path / "c.txt"
    path.write_text(doc(1) * 20)
    cache.mkdir(parents=True)
    dead = cache / ".tokens-x.build-999999999-abcd"  # no such process
    live = cache / f".tokens-y.build-{os.getpid()}-abcd"
    dead.mkdir(), live.mkdir()
    split_tokens(load_corpus(str(path)), "train", tok)
    assert not dead.exists() and live.exists()


def test_corpus_index_is_reused_until_a_shard_changes(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(I, "PERSIST_MIN_BYTES", 0)
    path = tmp_path / "c.jsonl"
    write_jsonl(path, [doc(i) for i in range(25)])
    first = load_corpus(str(path))
    calls = []
    real_scan = I.scan
    monkeypatch.setattr(I, "scan", lambda *a: calls.append(a) or real_scan(*a))
    assert load_corpus(str(path)).fingerprint == first.fingerprint and not calls  # metadata unchanged: not read
    write_jsonl(path, [doc(i) for i in range(26)])  # new size and mtime: read again
    changed = load_corpus(str(path))
    assert calls and changed.fingerprint != first.fingerprint and changed.num_documents == 26


def test_bpe_trains_from_the_stream(tmp_path, cache):
    path = tmp_path / "c.jsonl"
    write_jsonl(path, [doc(i) for i in range(30)])
    corpus = load_corpus(str(path))
    tok = build_tokenizer("bpe:300", corpus.iter_documents("train"), corpus.fingerprint)
    assert tok.vocab_size == 300 and tok.decode(tok.encode(doc(3))) == doc(3)


def test_a_tokenizer_panic_names_the_file(tmp_path):
    from ltm_ppl.data.tokenise import encode

    class PanicException(BaseException):  # what pyo3 raises: not an Exception subclass
        pass

    class Panicking:
        def encode_batch(self, texts):
            raise PanicException("called `Option::unwrap()` on a `None` value")

    with pytest.raises(LtmError, match=r"corpus file /x/y.jsonl: the tokenizer failed on it \(called"):
        encode(Panicking(), ["text"], "/x/y.jsonl")


# ---- lazy streams and the batch order ----------------------------------------------------------


def test_token_stream_slices_across_shards(tmp_path, monkeypatch):
    monkeypatch.setattr("ltm_ppl.data.stream.OPEN_MAPS", 2)  # more shards than open maps
    whole = np.arange(100, dtype=np.uint16)
    cuts = [0, 7, 7, 30, 31, 64, 100]  # includes an empty shard
    files = []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        (tmp_path / f"{k}.bin").write_bytes(whole[a:b].tobytes())
        files.append((tmp_path / f"{k}.bin", b - a))
    stream = TokenStream(files, "<u2")
    assert len(stream) == 100 and np.array_equal(np.asarray(stream), whole)
    for a, b in [(0, 100), (5, 40), (7, 8), (29, 65), (99, 100), (50, 50), (-3, None)]:
        assert np.array_equal(stream[a:b], whole[a:b]), (a, b)
    assert stream[-1] == 99 and stream[31] == 31
    with pytest.raises(IndexError):
        stream[100]
    assert np.array_equal(np.concatenate(list(stream.chunks(9))), whole)


def old_train_batch_windows(n, batch_size, seed, iteration):
    """The window indices train_batch picked before this change (a permutation per iteration)."""
    picked, position = [], iteration * batch_size
    while len(picked) < batch_size:
        epoch, offset = divmod(position, n)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(batch_size - len(picked), n - offset)
        picked.extend(order[offset : offset + take])
        position += take
    return np.array(picked)


def test_small_corpora_keep_their_batch_order():
    stream = np.arange(1000)
    n = num_windows(len(stream), 9)
    for iteration in (0, 7, 21, 22, 23, 50):  # 111 windows, batch 5: iteration 22 spans two epochs
        got = train_batch(stream, 9, 5, seed=3, iteration=iteration)[:, 0] // 9
        assert np.array_equal(got, old_train_batch_windows(n, 5, 3, iteration)), iteration


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 1025])
def test_keyed_permutation_visits_every_window_once_per_epoch(n):
    for seed, epoch in ((0, 0), (3, 1)):
        order = O.keyed_permutation(np.arange(n), n, seed, epoch)
        assert sorted(order.tolist()) == list(range(n))
    if n >= 64:
        a, b = O.keyed_permutation(np.arange(n), n, 0, 0), O.keyed_permutation(np.arange(n), n, 0, 1)
        assert (a != b).mean() > 0.9 and (a != np.arange(n)).mean() > 0.9  # epochs differ, not near identity
        assert abs(np.corrcoef(a, np.arange(n))[0, 1]) < 0.2


def test_large_corpora_order_costs_only_the_batch(monkeypatch):
    n = 10**12  # a trillion windows: a permutation could never be built
    positions = np.arange(5 * n - 3, 5 * n + 5)  # across the end of epoch 4
    got = O.window_order(positions, n, seed=1)
    assert got.min() >= 0 and got.max() < n and len(set(got.tolist())) == len(got)
    assert np.array_equal(got, O.window_order(positions, n, seed=1))
    assert not np.array_equal(got, O.window_order(positions, n, seed=2))
    monkeypatch.setattr(O, "IN_MEMORY_MAX", 0)  # the Feistel path at a size the test can check
    stream = np.arange(1000)
    epoch = np.concatenate([train_batch(stream, 9, 5, seed=3, iteration=i)[:, 0] // 9 for i in range(111 // 5)])
    assert len(set(epoch.tolist())) == len(epoch)


# ---- bad input: one error line naming the file, nothing written --------------------------------


def _not_gzip(d):
    (d / "a.jsonl.gz").write_bytes(b'{"text": "plain, not gzip"}\n')


def _truncated_gzip(d):
    (d / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n' * 200)[:40])


def _bad_utf8(d):
    (d / "a.jsonl").write_bytes(b'{"text": "ok"}\n\n{"text": "bad \xff byte"}\n')


def _bad_json(d):
    (d / "a.jsonl").write_bytes(b'{"text": "ok"}\n{"text": \n')


def _deeply_nested_json(d):
    (d / "a.jsonl").write_text('{"text": "ok"}\n' + "[" * 100_000 + "\n")


def _bad_json_in_gzip(d):
    (d / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "ok"}\n{"txt": "no text field"}\n'))


def _parquet_without_text(d):
    write_parquet(d / "a.parquet", ["x", "y"], column="body")


def _parquet_int_text(d):
    pq.write_table(pa.table({"text": [1, 2]}), d / "a.parquet")


def _parquet_null_row(d):
    write_parquet(d / "a.parquet", ["x", None, "z"])


def _not_parquet(d):
    (d / "a.parquet").write_bytes(b"PAR1 nothing else")


def _empty_txt_shard(d):
    (d / "a.txt").write_text("ok")
    (d / "b.txt").write_text("  \n")


def _no_shards(d):
    (d / "readme.md").write_text("no shard here")


BAD = [
    (_no_shards, "holds no .txt, .jsonl, .jsonl.gz or .parquet files"),
    (_not_gzip, "a.jsonl.gz is not valid gzip data"),
    (_truncated_gzip, "a.jsonl.gz is not valid gzip data"),
    (_bad_utf8, "a.jsonl line 3 is not UTF-8 text"),
    (_bad_json, "a.jsonl line 2 is not JSON"),
    (_deeply_nested_json, "a.jsonl line 2 is not JSON"),
    (_bad_json_in_gzip, "a.jsonl.gz line 2 has no string field 'text'"),
    (_parquet_without_text, "a.parquet has no column 'text' (columns: body, n)"),
    (_parquet_int_text, "a.parquet: column 'text' holds int64, not strings"),
    (_parquet_null_row, "a.parquet row 1 (counted from 0) has no text (null)"),
    (_not_parquet, "a.parquet is not a Parquet file"),
    (_empty_txt_shard, "b.txt is empty"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m.__name__.strip("_") for m, _ in BAD])
def test_bad_shards_fail_naming_the_file_and_write_nothing(tmp_path, cache, make, message):
    root = tmp_path / "corpus"
    root.mkdir()
    make(root)
    with pytest.raises(LtmError) as info:
        load_corpus(str(root))
    assert message in str(info.value) and str(root) in str(info.value)
    assert not cache.exists() or not any(cache.iterdir())


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch):
    write_parquet(tmp_path / "a.parquet", ["x"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(LtmError, match=r"pip install 'ltm-ppl\[parquet\]'"):
        load_corpus(str(tmp_path / "a.parquet"))


def test_cli_bad_shard_is_one_error_line_and_no_run(tmp_path, cache, tiny_toml):
    from test_cli import assert_one_line_error

    root = tmp_path / "corpus"
    root.mkdir()
    _bad_json(root)
    out = tmp_path / "run"
    assert_one_line_error(run_cli("fit", "--config", tiny_toml, "--data", root, "--out", out), "a.jsonl line 2 is not JSON")
    assert not out.exists() and not (cache.exists() and any(cache.iterdir()))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("fit", "--config", tiny_toml, "--data", empty, "--out", out), "holds no")
    assert not out.exists()


# ---- a corpus larger than what the loader holds --------------------------------------------------


def kjv_shards(folder, megabytes):
    """jsonl shards of KJV chapters, about 1 MB each, `megabytes` MB in all."""
    chapters = load_corpus("builtin:kjv").splits["train"]
    folder.mkdir()
    written = k = 0
    while written < megabytes << 20:
        lines = "".join(json.dumps({"text": c}) + "\n" for c in chapters[(k * 7) % 900:][:250])
        (folder / f"shard-{k:04d}.jsonl").write_text(lines)
        written, k = written + len(lines), k + 1
    return written


def traced_peaks(root, tokenizer, monkeypatch, batch_chars):
    """Peak Python/NumPy memory (tracemalloc) of indexing, tokenising and reading batches."""
    import tracemalloc

    from ltm_ppl.data import tokenise
    from ltm_ppl.evaluate import unigram_bound

    monkeypatch.setattr(tokenise, "BATCH_CHARS", batch_chars)
    monkeypatch.setattr(O, "IN_MEMORY_MAX", 0)  # the order of large corpora (below it an epoch's permutation is kept)
    warm = root.parent / "warm.txt"
    warm.write_text("imports and first-use costs, outside the measurement\n" * 20)
    split_tokens(load_corpus(str(warm)), "val", tokenizer, workers=1, progress=False)
    peaks = {}
    tracemalloc.start()
    try:
        corpus = load_corpus(str(root))
        peaks["index"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        train = split_tokens(corpus, "train", tokenizer, workers=1, progress=False)
        val = split_tokens(corpus, "val", tokenizer)
        peaks["tokenise"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        for it in range(20):
            train_batch(train, 64, 16, seed=0, iteration=it)
        peaks["batches"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        unigram_bound(train, val, tokenizer.vocab_size, 64)
        peaks["unigram"] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peaks, len(train)


def test_loading_streams_a_small_corpus(tmp_path, cache, tok, monkeypatch):
    size = kjv_shards(tmp_path / "corpus", 1)
    peaks, _ = traced_peaks(tmp_path / "corpus", tok, monkeypatch, batch_chars=16 << 10)
    assert peaks["index"] < size / 8 and peaks["tokenise"] < size / 3 and peaks["batches"] < size / 4, (size, peaks)


@pytest.mark.slow
def test_a_50mb_corpus_is_never_held_whole(tmp_path, cache, monkeypatch):
    """GPT-2 BPE over ~50 MB of shards: every phase stays far below the corpus (or its ids, which
    as one int64 array would take ~100 MB)."""
    size = kjv_shards(tmp_path / "corpus", 50)
    peaks, tokens = traced_peaks(tmp_path / "corpus", build_tokenizer("gpt2"), monkeypatch, batch_chars=1 << 20)
    print(f"\n{size} bytes, {tokens} train tokens, traced peaks (MB):", {k: round(v / 2**20, 2) for k, v in peaks.items()})
    assert tokens > 10_000_000
    assert peaks["index"] < 4 << 20 and peaks["tokenise"] < 16 << 20, peaks
    assert peaks["batches"] < 1 << 20 and peaks["unigram"] < 24 << 20, peaks
