"""One writer per run, and readers that never race it (issue 23, items 1, 2 and 5)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TOML

from ltm_ppl import run as checkpoint
from ltm_ppl.errors import LtmError
from ltm_ppl.run import lock as writer_lock

EVERY_ITERATION = (TINY_TOML.replace("checkpoint_interval = 20", "checkpoint_interval = 1")
                   .replace("eval_interval = 60", "eval_interval = 100000").replace("batch_size = 8", "batch_size = 2"))


def ltm(*args, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "ltm_ppl", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def finished(*args) -> subprocess.CompletedProcess:
    proc = ltm(*args)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lock") / "every1.toml"
    path.write_text(EVERY_ITERATION)
    return path


@pytest.fixture
def run(config, tmp_path) -> Path:
    out = finished("fit", "--config", config, "--data", "builtin:kjv", "--out", tmp_path / "run", "--iters", 1, "--quiet")
    assert out.returncode == 0, out.stderr
    return tmp_path / "run"


def held_by(run: Path, pid: int, timeout: float = 120) -> None:
    """Wait until the writer with `pid` holds the run's lock (/proc/locks names it)."""
    fd = os.open(run, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if writer_lock._holder(fd).startswith(f"pid {pid} "):
                return
            time.sleep(0.05)
    finally:
        os.close(fd)
    raise AssertionError(f"pid {pid} never took the lock of {run}")


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_first_and_kill_9_leaves_no_stale_lock(run):
    first = ltm("fit", "--resume", run, "--iters", 100000, "--quiet")
    try:
        held_by(run, first.pid)
        second = finished("fit", "--resume", run, "--iters", 100000, "--quiet")
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr
        assert f"pid {first.pid} on host {socket.gethostname()}" in lines[0]
        # A new run cannot be started into it either (the directory exists), nor is metrics.jsonl touched twice.
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    done = checkpoint.read_newest(run, checkpoint.trainer_state)["iteration"]
    third = finished("fit", "--resume", run, "--iters", done + 1, "--quiet")
    assert third.returncode == 0, third.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    iters = [r["iter"] for r in records if "split" not in r]  # training records (val ones repeat an iter)
    assert iters == list(range(1, done + 2)), "records written twice or out of order"


@pytest.mark.slow
def test_the_lock_is_held_by_the_process_and_released_with_it(run):
    """Held here: a child `fit` is refused naming this pid; released: the child trains."""
    writer_lock.hold(run)
    try:
        child = finished("fit", "--resume", run, "--iters", 2, "--quiet")
        assert child.returncode == 2 and f"pid {os.getpid()} on host" in child.stderr, child.stderr
    finally:
        writer_lock.release(run)
    child = finished("fit", "--resume", run, "--iters", 2, "--quiet")
    assert child.returncode == 0, child.stderr


def commit(run: Path, iteration: int) -> None:
    weights = {"w": np.full(3, float(iteration), np.float32)}
    checkpoint.save_checkpoint(run, weights, {"m": np.zeros(1, np.float32)}, {"iteration": iteration})


def test_a_reader_whose_checkpoint_is_pruned_under_it_reads_the_newer_one(tmp_path):
    """The writer commits iteration 8 (pruning 7) between the reader's listing and its read."""
    run = tmp_path / "run"
    run.mkdir()
    commit(run, 7)
    calls = []

    def read(where: Path):
        calls.append(where.name)
        if len(calls) == 1:
            commit(run, 8)  # what a concurrent `fit` does at this moment
        return checkpoint.load_weights(where)

    weights = checkpoint.read_newest(run, read)
    assert calls == ["00000007", "00000008"]
    assert weights["w"][0] == 8.0


def test_a_damaged_checkpoint_still_committed_is_an_error_not_a_retry(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    commit(run, 3)
    (checkpoint.latest_checkpoint(run) / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(LtmError, match="weights"):
        checkpoint.read_newest(run, checkpoint.load_weights)


@pytest.mark.slow
def test_fifty_reads_while_a_writer_commits_every_iteration(run):
    """Readers (the Python reads `eval` / `sample` make, and one `ltm sample`) against a writer that
    commits and prunes a checkpoint every iteration: every read succeeds, iterations never go back."""
    writer = ltm("fit", "--resume", run, "--iters", 100000, "--quiet")
    try:
        held_by(run, writer.pid)
        while checkpoint.read_newest(run, checkpoint.trainer_state)["iteration"] < 3:  # committing now
            time.sleep(0.05)
        seen, deadline = [], time.monotonic() + 120
        while (len(seen) < 50 or seen[-1] - seen[0] < 5) and time.monotonic() < deadline:
            state = checkpoint.read_newest(run, checkpoint.trainer_state)
            weights = checkpoint.read_newest(run, checkpoint.load_weights)
            assert weights, "no weights read"
            seen.append(state["iteration"])
        sample = finished("sample", run, "--max-tokens", 3, "--num", 1)
        assert sample.returncode == 0, sample.stderr
        assert writer.poll() is None, writer.stderr.read()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    assert seen == sorted(seen) and seen[-1] > seen[0], seen  # the writer committed while we read


@pytest.mark.slow
def test_resume_removes_its_own_debris_and_nothing_a_user_put_in_checkpoints(run):
    folder = run / checkpoint.CHECKPOINTS
    (folder / "latest").mkdir()
    (folder / "latest" / "weights.safetensors").write_bytes(b"a user's copy")
    (folder / "notes.txt").write_text("mine")
    (folder / "00000009.tmp").mkdir()  # a killed save
    (folder / ".00000000.old-1-abcd1234").mkdir()  # a killed prune
    out = finished("fit", "--resume", run, "--iters", 2, "--quiet")
    assert out.returncode == 0, out.stderr
    assert (folder / "latest" / "weights.safetensors").read_bytes() == b"a user's copy"
    assert (folder / "notes.txt").read_text() == "mine"
    assert not (folder / "00000009.tmp").exists() and not (folder / ".00000000.old-1-abcd1234").exists()
    assert [p.name for p in folder.iterdir() if p.name[0].isdigit()] == ["00000002"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["local", "langevin"])
def test_sigterm_inside_the_fast_steps_stops_the_iteration_and_commits_the_last_finished_one(method, config, tmp_path):
    """10,000 inner steps in iteration 1 (tens of seconds): SIGTERM a second into them ends the
    iteration there, commits iteration 0's state and says so; the run resumes."""
    run = tmp_path / "run"
    proc = ltm("fit", "--config", config, "--data", "builtin:kjv", "--out", run, "--iters", 2, "--steps", 10000,
               "--inference", method, "--quiet")
    deadline = time.monotonic() + 120
    while not checkpoint.committed_checkpoints(run) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # inside iteration 1's inner loop
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("SIGTERM: stopped during iteration 1 (its fast steps), with a "
                                                   "checkpoint of iteration 0 committed; resume with: ltm fit --resume")
    assert checkpoint.read_newest(run, checkpoint.trainer_state)["iteration"] == 0
    again = finished("fit", "--resume", run, "--iters", 1, "--steps", 2, "--quiet")
    assert again.returncode == 0, again.stderr
