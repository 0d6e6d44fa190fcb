"""ltm_ppl/run: opening a saved run reads its config, tokenizer, metrics and newest committed
checkpoint without importing the training code, torch or jax (issue 21)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import run_cli

from ltm_ppl.errors import LtmError
from ltm_ppl.run import Run

ITERS = 3


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_toml) -> Path:
    run = tmp_path_factory.mktemp("run") / "tiny"
    result = run_cli("fit", "--config", tiny_toml, "--out", run, "--iters", ITERS, "--data", "builtin:kjv", "--quiet")
    assert result.exit_code == 0, result.output
    return run


OPEN = textwrap.dedent(
    """
    import sys
    import ltm_ppl.run
    heavy = ("ltm_ppl.train", "torch", "jax", "pyro", "numpyro")
    print("on import:", sorted(m for m in heavy if m in sys.modules))
    run = ltm_ppl.run.Run.open(sys.argv[1])
    opened = (run.cfg.inference.method, run.iteration, run.tokenizer().vocab_size, len(run.metrics()),
              run.latest_checkpoint().name)
    print("on open:", sorted(m for m in heavy if m in sys.modules))
    print("opened:", opened)
    """
)


def test_importing_run_and_opening_a_run_load_no_training_code_torch_or_jax(tiny_run):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", OPEN, str(tiny_run)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "on import: []" in lines
    assert "on open: []" in lines
    assert f"opened: ('local', {ITERS}, 257, {ITERS + 1}, '{ITERS:08d}')" in lines  # bytes and an end token; 3 records and a val one


def test_open_returns_the_stored_config_and_the_newest_committed_iteration(tiny_run):
    run = Run.open(tiny_run)
    stored = json.loads((tiny_run / "config.json").read_text())
    assert run.path == tiny_run
    assert run.cfg.to_dict() == stored["config"]
    assert run.record == stored
    assert run.iteration == ITERS
    assert run.cfg.train.iters == ITERS and run.cfg.model.vocab_size == 257


def test_open_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(LtmError, match="run directory not found"):
        Run.open(tmp_path / "missing")
    with pytest.raises(LtmError, match="is not a run directory"):
        Run.open(tmp_path)


def test_fit_leaves_the_callers_config_as_given_and_writes_it_resolved(tiny_toml, tmp_path):
    from ltm_ppl.config import apply_overrides, load_toml
    from ltm_ppl.train import fit

    cfg = apply_overrides(load_toml(tiny_toml), {"train.iters": 2, "inference.method": "none", "data.data": "builtin:kjv"})
    given = cfg.to_dict()
    fit(cfg, out=str(tmp_path / "run"), progress=False, echo=lambda s: None)
    assert cfg.to_dict() == given
    stored = Run.open(tmp_path / "run").cfg
    assert (stored.model.vocab_size, stored.model.latent, stored.train.lr_decay_iters) == (257, False, 2)


def test_a_run_saved_with_the_removed_report_fixed_noise_field_opens_and_evaluates_the_same(tiny_run, tmp_path):
    """Runs saved before `inference.report_fixed_noise` became bound's at_fast_noise argument carry
    the field (false) in config.json: they open, and eval reports the same number."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    record = json.loads((old / "config.json").read_text())
    record["config"]["inference"]["report_fixed_noise"] = False
    (old / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    assert Run.open(old).cfg == Run.open(tiny_run).cfg
    numbers = [json.loads(run_cli("eval", r, "--max-windows", 2, "--steps", 2, "--json").stdout.splitlines()[-1])["nll_per_token"]
               for r in (tiny_run, old)]
    assert numbers[0] == numbers[1]
