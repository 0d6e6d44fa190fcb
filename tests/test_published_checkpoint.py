"""`ltm import` of a checkpoint in the published layout (tests/published_reference.py: the published
decoder written out by hand, its names, interleaved rotary, separate and grouped projections, the
published latent positions): the imported run's logits are the reference's in both backends, the
run works end to end, and every bad input is one error line, exit 2, nothing written."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from helpers import run_cli
from published_reference import ARGS, checkpoint_dict, published_model

from ltm_ppl.published_checkpoint import convert_state_dict, import_checkpoint


class Unsafe:
    """A class a checkpoint may pickle: loading it would need this code."""


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(reference model, checkpoint path) in the published layout, use_liger names."""
    model = published_model(seed=3)
    path = tmp_path_factory.mktemp("published") / "ckpt_1000.pt"
    torch.save(checkpoint_dict(model), path)
    return model, path


@pytest.fixture(scope="module")
def imported(published, tmp_path_factory, text_corpus):
    run = tmp_path_factory.mktemp("imported") / "run"
    import_checkpoint(published[1], run, str(text_corpus))
    return run


def inputs(seed=0, batch=2):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50257, (batch, ARGS["max_seq_len"]), generator=gen)
    z = torch.randn(batch, ARGS["max_z_len"], ARGS["dim"], generator=gen)
    return tokens, z


def test_imported_pyro_logits_are_the_published_decoders(published, imported, torch_one_thread):
    from ltm_ppl.eval_runs import open_run

    model, _ = published
    opened = open_run(imported, {"train.backend": "pyro", "train.device": "cpu"})
    tokens, z = inputs()
    with torch.no_grad():
        ours, theirs = opened.inference.decoder(tokens, z), model(tokens, z)
    assert theirs.abs().max() > 3  # wide weights: a wrong layout or position moves logits by nats
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-4)


@pytest.mark.usefixtures("jax_caches")
def test_imported_numpyro_logits_are_the_published_decoders(published, imported, torch_one_thread):
    import jax.numpy as jnp

    from ltm_ppl.models.jax.decoder import decoder_logits
    from ltm_ppl.eval_runs import open_run

    model, _ = published
    opened = open_run(imported, {"train.backend": "numpyro", "train.device": "cpu"})
    tokens, z = inputs(seed=1)
    ours = decoder_logits(opened.inference.params, opened.cfg.model, jnp.asarray(tokens.numpy()), jnp.asarray(z.numpy()))
    with torch.no_grad():
        theirs = model(tokens, z).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=2e-4)


@pytest.mark.parametrize("naming", ["plain", "ddp-compiled"])
def test_every_published_naming_converts_alike(naming):
    """FeedForward's w1/w3/w2 (use_liger off), DDP's module. and a compiled model's _orig_mod.
    around the liger names all give the weights of the liger-named checkpoint."""
    model = published_model(seed=4)
    reference = convert_state_dict(checkpoint_dict(model, "liger")["model"], ARGS | {"hidden_dim": None})
    other = checkpoint_dict(model, naming)
    converted = convert_state_dict(other["model"], other["model_args"] | {"hidden_dim": None})
    assert converted.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(converted[name], reference[name], err_msg=name)


def test_import_config_and_provenance(published, imported):
    record = json.loads((imported / "config.json").read_text())["config"]
    assert record["model"] | {"latent_rope": "published"} == record["model"]  # the published positions kept
    m = record["model"]
    assert (m["n_layer"], m["n_head"], m["d_model"], m["n_z"], m["block_size"], m["attention_window"], m["vocab_size"]) == (
        2, 4, 32, 4, 32, 8, 50258)
    assert m["mlp_hidden"] == 96 and not m["cross_out_zero"]
    assert record["inference"]["eval_steps"] == 3 and record["inference"]["fast_lr"] == 0.34  # the checkpoint's own
    assert record["inference"]["init"] == "published" and record["data"]["tokenizer"] == "gpt2"
    source = json.loads((imported / "imported.json").read_text())
    assert source["iter_num"] == 1000 and source["best_val_loss"] == pytest.approx(3.25)
    assert source["model_args"]["window_size"] == 8


def test_import_then_eval_sample_compare_end_to_end(published, tmp_path, text_corpus):
    run = tmp_path / "imported"
    result = run_cli("import", published[1], "--out", run, "--data", text_corpus)
    assert result.exit_code == 0, result.output
    assert f"run: {run}" in result.output
    result = run_cli("eval", run, "--max-windows", 2, "--steps", 2, "--fixed-noise", "--device", "cpu", "--json", "-q")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["tokenizer"] == "gpt2" and record["num_tokens"] == 2 * 32 and np.isfinite(record["nll_per_token"])
    assert {r["label"] for r in record["rows"]} >= {"honest bound, fresh noise"}
    # the 50258th row (the published BOS) is never sampled: ids past GPT-2's are masked
    result = run_cli("sample", run, "--backend", "numpyro", "--max-tokens", 4, "--steps", 1, "--device", "cpu", "--json", "-q")
    assert result.exit_code == 0, result.output
    result = run_cli("compare", run, run, "--max-windows", 1, "--steps", 1, "--device", "cpu", "--json", "-q")
    assert result.exit_code == 0, result.output


def test_a_tokenizer_larger_than_the_model_is_still_refused(imported, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(imported, run)
    record = json.loads((run / "config.json").read_text())
    record["config"]["model"]["vocab_size"] = 50000
    (run / "config.json").write_text(json.dumps(record))
    result = run_cli("eval", run, "--max-windows", 1)
    assert result.exit_code == 2 and "tokenizer.json is damaged" in result.output


# ----- bad input: one error line, exit 2, nothing written ----------------------------------------
def _save(path, record):
    torch.save(record, path)


def _bad_inputs():
    model = published_model(seed=5)

    def edit(**changes):
        record = checkpoint_dict(model)
        for key, value in changes.items():
            if value is None:
                del record[key]
            else:
                record[key] = value
        return record

    def args(**changes):
        return edit(model_args=dict(checkpoint_dict(model)["model_args"], **changes))

    def state(change):
        record = checkpoint_dict(model)
        change(record["model"])
        return record

    def untie(s):
        s["output.weight"] = s["output.weight"] + 1

    def reshape(s):
        s["layers.1.feed_forward.up_proj.weight"] = torch.zeros(64, 32)

    def extra(s):
        s["layers.0.prior.weight"] = torch.zeros(3)

    def drop(s):
        del s["layers.1.cross_attention._orig_mod.wk.weight"]

    good = checkpoint_dict(model)
    return {
        "missing": (None, "checkpoint not found"),
        "needs code": (lambda p: _save(p, dict(good, extra=Unsafe())), "needs arbitrary code to load (it pickles"),
        "truncated": (lambda p: (_save(p, good), p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])), "damaged, truncated"),
        "foreign text": (lambda p: p.write_text("step,loss\n1,3.2\n"), "damaged, truncated or not a PyTorch checkpoint"),
        "foreign pickle": (lambda p: p.write_bytes(pickle.dumps({"model": {}}, protocol=2)), "not a PyTorch checkpoint"),
        "not a dict": (lambda p: _save(p, [torch.zeros(2)]), "holds a list, not a published LTM checkpoint"),
        "no model": (lambda p: _save(p, edit(model=None)), "has no 'model'"),
        "no model_args": (lambda p: _save(p, edit(model_args=None)), "has no 'model_args'"),
        "unknown flag": (lambda p: _save(p, args(n_experts=4)), "unknown setting 'n_experts'"),
        "odd heads": (lambda p: _save(p, args(n_heads=3)), "does not split into 3 heads"),
        "no latent positions": (lambda p: _save(p, args(use_z_pos_emb=False)), "use_z_pos_emb is false"),
        "latents not per layer": (lambda p: _save(p, args(max_z_len=3)), "not a multiple of n_layers"),
        "untied head": (lambda p: _save(p, state(untie)), "untied output layer"),
        "wrong shape": (lambda p: _save(p, state(reshape)), "up_proj.weight of the checkpoint has shape [64, 32]"),
        "extra tensor": (lambda p: _save(p, state(extra)), "has tensor layers.0.prior.weight"),
        "missing tensor": (lambda p: _save(p, state(drop)), "lacks tensor layers.1.cross_attention.wk.weight"),
    }


BAD = _bad_inputs()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_are_one_error_line_and_write_nothing(case, tmp_path):
    write, message = BAD[case]
    path = tmp_path / "ckpt.pt"
    if write is not None:
        write(path)
    out = tmp_path / "runs" / "new"
    result = run_cli("import", path, "--out", out)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not out.exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no hidden half-built run either


def test_an_existing_out_is_refused_and_left_alone(published, imported):
    before = sorted(p.name for p in imported.iterdir())
    result = run_cli("import", published[1], "--out", imported)
    assert result.exit_code == 2 and result.output.startswith("error: ") and "existing run" in result.output
    assert sorted(p.name for p in imported.iterdir()) == before


def test_unsafe_code_is_never_run(tmp_path):
    """A pickle whose loading would call a function: refused before anything runs."""
    import os

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_args": {}, "x": Payload()}, path)
    result = run_cli("import", path, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "needs arbitrary code" in result.output and not marker.exists()


@pytest.mark.slow  # ~25 s per backend on 2 shared cores
@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_diagnose_reads_an_imported_run(imported, tmp_path, backend):
    out = tmp_path / "diagnostics"
    result = run_cli("diagnose", imported, "--inference", "local", "--sequences", 2, "--steps", 2, "--backend", backend,
                     "--device", "cpu", "--out", out, "--json", "-q")
    assert result.exit_code == 0, result.output
    assert "local" in json.loads(result.stdout.strip().splitlines()[-1])["methods"]
