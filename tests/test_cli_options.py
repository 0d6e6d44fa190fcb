"""Options every command shares (--threads, --quiet), --version, --help defaults, the early
destination check, and sample's flags."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import run_cli
from test_cli import assert_one_line_error, last_json


def test_version():
    from ltm_ppl import __version__

    result = run_cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"ltm {__version__}"


def test_help_shows_the_default_a_run_gets_and_keeps_flags_unset():
    from ltm_ppl.cli import cli

    fit = cli.commands["fit"]
    iters = next(p for p in fit.params if p.name == "iters")
    assert iters.default is None  # not given: a --config file's value is kept
    help_text = run_cli("fit", "--help").stdout
    assert "[default: 300]" in help_text and "[default: bpe:1024]" in help_text and "builtin:ptb" in help_text
    assert "(300)" not in help_text
    assert "[default: the run's eval_steps]" in run_cli("sample", "--help").stdout


def test_every_command_takes_threads_and_quiet():
    for name in ("fit", "eval", "sample", "diagnose", "compare", "plot", "import"):
        text = run_cli(name, "--help").stdout
        assert "--threads" in text and "--quiet" in text, name


def _in_subprocess(code: str, env: dict) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "XLA_FLAGS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=clean | env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")


CLI_THEN_TORCH = """
import os, sys
from ltm_ppl.cli import cli
try:
    cli(sys.argv[1:] or {args!r})
except SystemExit:
    pass
import torch
print(torch.get_num_threads())
print(os.environ.get("XLA_FLAGS", ""))
print(os.environ.get("OMP_WAIT_POLICY", ""))
"""


def test_threads_flag_reaches_torch_and_xla_flags():
    # `compare` with one run fails after the options are parsed: the settings are in place by then.
    # (torch caps a count from the environment at the cores it sees, so 1 is what every machine shows.)
    threads, xla, policy = _in_subprocess(CLI_THEN_TORCH.format(args=["compare", "--threads", "1", "x"]), {})[:3]
    assert threads == "1"
    assert "intra_op_parallelism_threads=1" in xla.split() and "--xla_cpu_multi_thread_eigen=false" in xla.split()
    assert policy == "PASSIVE"
    _, xla, _ = _in_subprocess(CLI_THEN_TORCH.format(args=["compare", "--threads", "3", "x"]),
                               {"XLA_FLAGS": "--xla_dump_to=/tmp/x intra_op_parallelism_threads=7"})[:3]
    assert xla.split() == ["--xla_dump_to=/tmp/x", "--xla_cpu_multi_thread_eigen=true", "intra_op_parallelism_threads=3"]


def test_threads_flag_reaches_torch_already_imported():
    import torch

    from ltm_ppl.threads import configure_threads

    before = torch.get_num_threads()
    try:
        assert configure_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_omp_num_threads_is_the_default():
    threads, xla, _ = _in_subprocess(CLI_THEN_TORCH.format(args=["compare", "x"]), {"OMP_NUM_THREADS": "1"})[:3]
    assert threads == "1" and "intra_op_parallelism_threads=1" in xla.split()


def test_threads_reach_jax_before_it_starts():
    code = ("from ltm_ppl.threads import configure_threads; configure_threads(2)\n"
            "import os, jax; print(os.environ['XLA_FLAGS']); print(jax.device_count())")
    xla, devices = _in_subprocess(code, {"JAX_PLATFORMS": "cpu"})[:2]
    assert "intra_op_parallelism_threads=2" in xla.split() and devices == "1"


def test_bad_threads_is_one_line():
    assert_one_line_error(run_cli("compare", "--threads", "0", "a", "b"), "--threads must be a positive integer")


def test_unwritable_out_fails_before_the_corpus_is_read(tmp_path):
    start = time.perf_counter()
    result = run_cli("fit", "--data", tmp_path / "no-such-corpus", "--out", "/proc/ltm-run")
    assert_one_line_error(result, "cannot create the run directory /proc/ltm-run")
    assert time.perf_counter() - start < 5
    assert_one_line_error(run_cli("fit", "--data", tmp_path / "no-such-corpus", "--out", "/etc/hostname/run"),
                          "is not a directory")


def test_sample_flags_and_quiet_progress(trained_run):
    noisy = run_cli("sample", trained_run, "--max-tokens", "30", "--num", "2", "--json")
    assert noisy.exit_code == 0, noisy.output
    assert "sample:" in noisy.stderr  # the progress bar, on stderr
    record = last_json(noisy)
    assert len(record["samples"]) == 2 and all("\ufffd" not in t for t in record["samples"])
    quiet = run_cli("sample", trained_run, "--max-tokens", "30", "--num", "2", "--json", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "" and last_json(quiet) == record
    # Past end-of-text: documents go on after the <|endoftext|> marker; stopping is the default.
    # (temperature 3 makes end-of-text likely within 300 tokens in some of the 4 samples)
    args = ("sample", trained_run, "--max-tokens", "300", "--num", "4", "--temperature", "3", "--json", "-q")
    long = last_json(run_cli(*args, "--no-stop-at-eos"))["samples"]
    short = last_json(run_cli(*args))["samples"]
    assert any("<|endoftext|>" in t for t in long) and not any("<|endoftext|>" in t for t in short)
    assert all(a.startswith(b) for a, b in zip(long, short))
    assert any(len(a) > len(b) for a, b in zip(long, short))
    assert_one_line_error(run_cli("sample", trained_run, "--max-tokens", "1000000000000"), "--max-tokens must be at most 100000")


def test_eval_json_shows_progress_unless_quiet(trained_run):
    result = run_cli("eval", trained_run, "--max-windows", "4", "--json")
    assert result.exit_code == 0 and "eval:" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["num_sequences"] == 4
    assert run_cli("eval", trained_run, "--max-windows", "4", "--json", "-q").stderr == ""


def test_run_files_respect_the_umask(trained_run):
    """Every file of a run has the mode open() gives under the umask (mkstemp alone gives 0600)."""
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in trained_run.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o666 & ~mask}, modes
