"""A failing write (disk full, quota, I/O error, read-only file system) during `fit` is one line,
exit 2, no partial checkpoint left, and the run resumes once the cause is gone (issue 23, item 3).

The failures are injected with strace (`-e inject=SYSCALL:error=ERRNO:when=N`): the N-th call of
that system call in the process fails; N walks over the run's creation, its metrics appends and
its periodic checkpoints (a tiny fit makes 28 writes, 22 of them to the run)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_TOML

from ltm_ppl import run as checkpoint

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (fault injection)")

SIX_ITERS = (TINY_TOML.replace("iters = 60", "iters = 6").replace("checkpoint_interval = 20", "checkpoint_interval = 2")
             .replace("eval_interval = 60", "eval_interval = 6").replace("eval_windows = 16", "eval_windows = 4")
             .replace("batch_size = 8", "batch_size = 4"))

MESSAGES = {"ENOSPC": "No space left on device", "EDQUOT": "Disk quota exceeded", "EIO": "Input/output error",
            "EROFS": "Read-only file system"}


# One thread, and a wait policy given, so that `ltm` does not scan /proc for other ltm jobs
# (threads.configure_threads): that scan's openat calls vary with the machine's processes, and
# strace's `when=N` counts them, so the injection point moved between the traced run and the
# injected one when other jobs came and went.
QUIET_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def ltm(*args, inject: tuple[str, str, int] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ltm_ppl", *map(str, args)]
    if inject:
        call, errno, n = inject
        cmd = ["strace", "-f", "-qq", "-o", os.devnull, "-e", f"trace={call}", "-e", f"inject={call}:error={errno}:when={n}", *cmd]
    return subprocess.run(cmd, env=dict(os.environ, **QUIET_ENV), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """The config, after one unbroken fit: the token cache is built, so the N-th write below is
    the run's own (the numbering of the module docstring), not the cache's."""
    folder = tmp_path_factory.mktemp("osfail")
    path = folder / "six.toml"
    path.write_text(SIX_ITERS)
    out = ltm("fit", "--config", path, "--data", "builtin:kjv", "--out", folder / "unbroken", "--quiet")
    assert out.returncode == 0, out.stderr[-2000:]
    return path


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name or ".incomplete-" in p.name or ".old-" in p.name]


CASES = [("write", "ENOSPC", 10), ("write", "ENOSPC", 2), ("write", "ENOSPC", 14), ("fsync", "EIO", 8),
         ("write", "EDQUOT", 5), ("write", "ENOSPC", 12), ("rename", "EROFS", 4), ("fsync", "EIO", 3)]


@pytest.mark.parametrize("inject", [pytest.param(c, marks=[pytest.mark.slow] if i >= 1 else [], id="-".join(map(str, c)))
                                    for i, c in enumerate(CASES)])
def test_a_failed_write_is_one_line_leaves_no_partial_checkpoint_and_the_run_resumes(inject, config, tmp_path):
    run = tmp_path / "run"
    out = ltm("fit", "--config", config, "--data", "builtin:kjv", "--out", run, "--quiet", inject=inject)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith(f"error: {tmp_path}") and MESSAGES[inject[1]] in lines[0], lines[0]
    assert leftovers(tmp_path) == []
    if not run.exists():  # it failed while the run was being built: nothing at all, as promised
        assert list(tmp_path.iterdir()) == []
        return
    committed = checkpoint.read_newest(run, checkpoint.trainer_state)["iteration"]
    assert committed < 6
    again = ltm("fit", "--resume", run, "--quiet")  # the cause gone
    assert again.returncode == 0, again.stderr[-2000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "split" not in r] == [1, 2, 3, 4, 5, 6]
    assert checkpoint.read_newest(run, checkpoint.trainer_state)["iteration"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("call, suffix", [("write", ".png"), ("pwrite64", ".nc")], ids=["plot", "netcdf"])
def test_a_diagnose_whose_file_write_fails_is_one_line_and_leaves_nothing(call, suffix, config, tmp_path):
    """The first write into a plot (write) or the NetCDF file (HDF5's pwrite64) fails, found by
    tracing an unbroken diagnose with strace -y (which names each call's file): one line naming
    that file, exit 2, no folder and no hidden one."""
    run = tmp_path / "run"
    assert ltm("fit", "--config", config, "--data", "builtin:kjv", "--out", run, "--quiet").returncode == 0
    args = ("diagnose", run, "--sequences", 2)
    env = dict(os.environ, **QUIET_ENV)
    n = first_call_into(call, f"{suffix}>", [*args, "--out", tmp_path / "unbroken"], env, tmp_path / "trace.txt")
    out = ltm(*args, "--out", tmp_path / "broken", inject=(call, "ENOSPC", n))
    lines = [line for line in out.stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert f"{suffix}: " in lines[0] and "No space left on device" in lines[0] and "Traceback" not in out.stderr, lines[0]
    assert len(out.stderr.replace("\r", "\n").split(lines[0])[1].strip().splitlines()) == 0  # nothing after it
    assert not (tmp_path / "broken").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".broken")]


def first_call_into(call: str, fragment: str, argv: list, env: dict, trace: Path, also: str = "") -> int:
    """The number of the first `call` whose file's path contains `fragment` (and whose line holds
    `also`, e.g. O_WRONLY), in an unbroken run of `ltm argv` traced with strace -y (which names
    each call's file)."""
    traced = subprocess.run(["strace", "-f", "-qq", "-y", "-o", str(trace), "-e", f"trace={call}", sys.executable,
                             "-m", "ltm_ppl", *map(str, argv)], env=env, capture_output=True, text=True, timeout=300)
    assert traced.returncode == 0, traced.stderr[-2000:]
    calls = [line for line in trace.read_text().splitlines() if f"{call}(" in line]
    target = next(line for line in calls if fragment in line.split(",")[0 if call != "openat" else 1] and also in line)
    tid = target.split()[0]  # strace counts `when=N` per thread: that thread's calls up to the target
    return [line for line in calls if line.split()[0] == tid].index(target) + 1


def one_error_line(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in out.stderr.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("fit:")]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    return lines[0]


@pytest.mark.slow
def test_a_token_cache_write_that_fails_is_one_line_and_leaves_no_partial_cache(config, tmp_path):
    """The first write into a fresh token cache fails: one line naming the cache file; the cache
    keeps no partial file; the next fit builds it and trains."""
    env = dict(os.environ, **QUIET_ENV, LTM_CACHE_DIR=str(tmp_path / "traced-cache"))
    fit = ["fit", "--config", config, "--data", "builtin:kjv", "--quiet", "--iters", 1]
    n = first_call_into("write", "traced-cache", [*fit, "--out", tmp_path / "traced"], env, tmp_path / "trace.txt")
    cache = tmp_path / "cache"
    env["LTM_CACHE_DIR"] = str(cache)
    cmd = ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=write", "-e", f"inject=write:error=ENOSPC:when={n}",
           sys.executable, "-m", "ltm_ppl", *map(str, fit), "--out", str(tmp_path / "run")]
    line = one_error_line(subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300))
    assert str(cache) in line and "No space left on device" in line, line
    assert not (tmp_path / "run").exists()
    assert not [p for p in cache.rglob("*") if p.is_file() and ".tmp" in p.name]
    again = subprocess.run([sys.executable, "-m", "ltm_ppl", *map(str, fit), "--out", str(tmp_path / "run")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.slow
def test_an_import_whose_write_fails_is_one_line_and_writes_nothing(tmp_path):
    """`ltm import` of a published-layout checkpoint: the first write of its weights fails."""
    torch = pytest.importorskip("torch")
    from published_reference import checkpoint_dict, published_model

    ckpt = tmp_path / "ckpt_1000.pt"
    torch.save(checkpoint_dict(published_model(seed=3)), ckpt)
    env = dict(os.environ, **QUIET_ENV)
    n = first_call_into("write", "weights.safetensors", ["import", ckpt, "--out", tmp_path / "traced"], env,
                        tmp_path / "trace.txt")
    out = ltm("import", ckpt, "--out", tmp_path / "run", inject=("write", "ENOSPC", n))
    line = one_error_line(out)
    assert ".safetensors" in line and "No space left on device" in line, line  # a file of the run being built
    assert not (tmp_path / "run").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]


@pytest.mark.slow
def test_a_resume_on_a_read_only_file_system_is_one_line_and_changes_nothing(config, tmp_path):
    """EROFS at the first file `fit --resume` opens for writing in the run (root ignores chmod, so
    the read-only file system is injected): one line, exit 2, the run byte for byte as it was."""
    run = tmp_path / "run"
    assert ltm("fit", "--config", config, "--data", "builtin:kjv", "--out", run, "--iters", 2, "--quiet").returncode == 0
    shutil.copytree(run, tmp_path / "traced")
    env = dict(os.environ, **QUIET_ENV)
    n = first_call_into("openat", str(tmp_path / "traced"), ["fit", "--resume", tmp_path / "traced", "--iters", 3, "--quiet"],
                        env, tmp_path / "trace.txt", also="O_WRONLY")
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    out = ltm("fit", "--resume", run, "--iters", 3, "--quiet", inject=("openat", "EROFS", n))
    line = one_error_line(out)
    assert str(run) in line and "Read-only file system" in line, line
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    assert ltm("fit", "--resume", run, "--iters", 3, "--quiet").returncode == 0
