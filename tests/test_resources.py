"""Huge counts and sizes refused before any work, with the memory they need (issue 23, item 6)."""
from __future__ import annotations

import pytest
from helpers import TINY_TOML, run_cli

from ltm_ppl import resources
from ltm_ppl.config import RunConfig
from ltm_ppl.errors import LtmError


def test_the_parameter_count_is_a_lower_bound_within_the_norms():
    """decoder_parameters counts what the torch decoder holds but its norm gains (a few d per layer)."""
    torch = pytest.importorskip("torch")
    from ltm_ppl.models.torch.decoder import Decoder

    for latent in (True, False):
        cfg = RunConfig()
        cfg.model.vocab_size, cfg.model.latent = 300, latent
        actual = sum(p.numel() for p in Decoder(cfg.model).parameters())
        counted = resources.decoder_parameters(cfg.model)
        assert counted <= actual and actual - counted <= 8 * cfg.model.n_layer * cfg.model.d_model + cfg.model.d_model, \
            (latent, counted, actual)
    del torch


def test_a_request_above_the_memory_available_names_both(monkeypatch):
    monkeypatch.setattr(resources, "available_bytes", lambda device="cpu": 2 * 2**30)
    with pytest.raises(LtmError, match=r"^x needs at least 3.0 GiB of memory, 2.0 GiB is available: ask less$"):
        resources.require_memory("x", 3 * 2**30, "cpu", "ask less")
    resources.require_memory("x", 2 * 2**30, "cpu")  # exactly what there is: not refused


@pytest.mark.parametrize("args, what", [
    (["fit", "--batch-size", "1000000000"], "this training run needs at least"),
    (["fit", "--config", "{big}"], "this training run needs at least"),
])
def test_fit_refuses_what_cannot_fit_and_writes_nothing(args, what, tmp_path):
    big = tmp_path / "big.toml"
    big.write_text(TINY_TOML.replace("d_model = 32", "d_model = 1048576"))
    args = [a.replace("{big}", str(big)) for a in args]
    result = run_cli(*args, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 2 and what in result.output and "GiB is available" in result.output, result.output
    assert not (tmp_path / "run").exists() and not [p for p in tmp_path.iterdir() if p.name != "big.toml"]


@pytest.mark.parametrize("args, what", [
    (["eval", "{run}", "--samples", "100000000"], "--samples must be at most 100000"),
    (["eval", "{run}", "--inference", "langevin", "--chains", "100000000"], "this evaluation needs at least"),
    (["sample", "{run}", "--num", "100000000"], "sampling needs at least"),
    (["diagnose", "{run}", "--inference", "langevin", "--chains", "100000", "--draws", "100000", "--out", "{out}"],
     "this diagnosis needs at least"),
])
def test_readers_refuse_what_cannot_fit(args, what, trained_run, tmp_path):
    args = [a.replace("{run}", str(trained_run)).replace("{out}", str(tmp_path / "diag")) for a in args]
    result = run_cli(*args)
    assert result.exit_code == 2 and what in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "diag").exists()
