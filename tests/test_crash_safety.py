"""A run survives a kill at any point of a save (issue 9): SIGKILL injected before each write,
fsync, rename and removal of the save path (ltm_ppl/durable.py, LTM_FAULT_KILL_AT), then the run
either does not exist (killed before its first commit) or opens, evaluates without being written,
and resumes to final weights and metrics bit-identical to an unbroken run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import JAX_CACHE, TINY_TOML, run_cli

from ltm_ppl import run as checkpoint

ITERS = 3  # checkpoints at 0 (creation), 2 (periodic, prunes 0) and 3 (final: the same steps again)
CONFIG = (TINY_TOML.replace("checkpoint_interval = 20", "checkpoint_interval = 2")
          .replace("eval_interval = 60", "eval_interval = 2").replace("eval_windows = 16", "eval_windows = 2"))


def fit_process(config: Path, out: Path, *args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """`python -m ltm_ppl fit` as its own process, on one CPU thread like the test process."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "ltm_ppl", "fit", "--config", str(config), "--out", str(out),
                             "--iters", str(ITERS), *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def final_state(run: Path) -> tuple[dict, dict, list]:
    where = checkpoint.latest_checkpoint(run)
    optimizer, state = checkpoint.load_optimizer(where)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return checkpoint.load_weights(where), optimizer, [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records] + [state["iteration"]]


def assert_same_run(a: Path, b: Path) -> None:
    (wa, oa, ma), (wb, ob, mb) = final_state(a), final_state(b)
    for name, x, y in (("weights", wa, wb), ("optimizer", oa, ob)):
        assert x.keys() == y.keys(), name
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}: {key}")
    assert ma == mb


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "every2.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def unbroken(config, tmp_path_factory, torch_one_thread):
    """The reference run (its own process, one thread) and the labels of its save steps up to the final save."""
    folder = tmp_path_factory.mktemp("unbroken")
    trace = folder / "trace.txt"
    proc = fit_process(config, folder / "run", env={"LTM_FAULT_TRACE": str(trace)})
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    steps = [line.split(" ", 1)[1] for line in trace.read_text().splitlines()]
    final_save = [i for i, label in enumerate(steps) if label == "fsync metrics.jsonl"][1]
    return folder / "run", steps[:final_save]  # creation and the periodic save (the final one repeats it)


def kill_and_recover(config: Path, folder: Path, kill_at: int, reference: Path, backend_args=()) -> str:
    """Kill `fit` at save step `kill_at`; check what is left; return "no run" or "resumed from N"."""
    run = folder / "run"
    proc = fit_process(config, run, *backend_args, env={"LTM_FAULT_KILL_AT": str(kill_at)})
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, (kill_at, proc.returncode, err)
    if not run.exists():
        assert not any(p.name.startswith("run") for p in folder.iterdir())  # only hidden debris
        return "no run"
    before = snapshot(run)
    result = run_cli("eval", run, "--max-windows", "2", "--steps", "2", "--json")
    assert result.exit_code == 0, (kill_at, result.output)
    assert snapshot(run) == before, "eval wrote into the run"
    start = checkpoint.trainer_state(checkpoint.latest_checkpoint(run))["iteration"]
    resumed = run_cli("fit", "--resume", run)
    assert resumed.exit_code == 0, (kill_at, resumed.output)
    assert_same_run(run, reference)
    assert [p.name for p in (run / "checkpoints").iterdir()] == [checkpoint.checkpoint_name(ITERS)]  # debris gone
    return f"resumed from {start}"


def test_a_kill_at_the_commit_of_a_checkpoint_resumes_exactly(config, unbroken, tmp_path, torch_one_thread):
    reference, steps = unbroken
    commit = steps.index("rename 00000002.tmp -> 00000002") + 1
    assert kill_and_recover(config, tmp_path, commit, reference) == "resumed from 0"
    assert kill_and_recover(config, tmp_path / "after", commit + 1, reference) == "resumed from 2"


@pytest.mark.slow
def test_a_kill_at_every_save_step_leaves_no_run_or_a_run_that_resumes_exactly(config, unbroken, tmp_path, torch_one_thread):
    reference, steps = unbroken
    outcomes = {}
    for n, label in enumerate(steps, 1):
        outcomes[f"{n:2d} {label}"] = kill_and_recover(config, tmp_path / str(n), n, reference)
    print("\n".join(f"{k}: {v}" for k, v in outcomes.items()))
    created = steps.index(next(s for s in steps if s.startswith("rename .run.incomplete"))) + 1
    assert all(v == "no run" for v in list(outcomes.values())[:created - 1])
    assert all(v.startswith("resumed") for v in list(outcomes.values())[created:])


@pytest.mark.slow
def test_a_kill_during_a_numpyro_save_resumes_exactly(config, tmp_path):
    # jit compilations persist across these processes (and test sessions)
    jax_env = {"JAX_COMPILATION_CACHE_DIR": str(JAX_CACHE), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
    reference, trace = tmp_path / "reference", tmp_path / "trace.txt"
    proc = fit_process(config, reference, "--backend", "numpyro", env=jax_env | {"LTM_FAULT_TRACE": str(trace)})
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    steps = [line.split(" ", 1)[1] for line in trace.read_text().splitlines()]
    commit = steps.index("rename 00000002.tmp -> 00000002") + 1
    run = tmp_path / "killed" / "run"
    proc = fit_process(config, run, "--backend", "numpyro", env=jax_env | {"LTM_FAULT_KILL_AT": str(commit)})
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.trainer_state(checkpoint.latest_checkpoint(run))["iteration"] == 0
    resumed = subprocess.run([sys.executable, "-m", "ltm_ppl", "fit", "--resume", str(run)],
                             env=dict(os.environ, OMP_NUM_THREADS="1", **jax_env), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run, reference)

def interrupt_training(tmp_path, config: Path, signum: int) -> tuple[Path, subprocess.CompletedProcess]:
    """Start a long `fit`, send `signum` once it has trained a few iterations, wait for it."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ltm_ppl", "fit", "--config", str(config), "--out", str(run),
                             "--iters", "100000"], env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
            time.sleep(0.05)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return run, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("signum, code", [pytest.param(signal.SIGINT, 130, id="SIGINT"),
                                          pytest.param(signal.SIGTERM, 143, id="SIGTERM", marks=pytest.mark.slow)])
def test_a_signal_commits_a_checkpoint_says_how_to_resume_and_resumes_exactly(tmp_path, config, signum, code, torch_one_thread):
    run, result = interrupt_training(tmp_path, config, signum)
    assert result.returncode == code, result.stderr
    lines = [part for line in result.stderr.splitlines() for part in line.split("\r") if part.strip()]
    name, n = signal.Signals(signum).name, len(train_lines(run))
    # Between iterations, or (Pyro, one worker) inside one's fast steps or an evaluation's,
    # abandoning it: either way the committed checkpoint is the last finished iteration, n.
    assert lines[-1] in (f"{name}: stopped after iteration {n} with a checkpoint committed; resume with: ltm fit --resume {run}",
                         f"{name}: stopped during iteration {n + 1} (its fast steps), with a checkpoint of iteration {n} "
                         f"committed; resume with: ltm fit --resume {run}",
                         f"{name}: stopped after iteration {n} (its evaluation skipped) with a checkpoint committed; "
                         f"resume with: ltm fit --resume {run}"), result.stderr
    assert not any(line.startswith("fit:") for line in result.stderr.split(lines[-1])[1:])  # no bar after it
    done = checkpoint.trainer_state(checkpoint.latest_checkpoint(run))["iteration"]
    assert done == len(train_lines(run)) >= 2  # the wait above saw 3 records (train and val)
    # Resumed two iterations further it equals an unbroken run of the same settings (horizon 100000).
    resumed = run_cli("fit", "--resume", run, "--iters", done + 2)
    assert resumed.exit_code == 0, resumed.output
    reference = run_cli("fit", "--config", config, "--out", tmp_path / "reference", "--iters", done + 2,
                        "--lr-decay-iters", "100000")
    assert reference.exit_code == 0, reference.output
    (wa, oa, ma), (wb, ob, mb) = final_state(run), final_state(tmp_path / "reference")
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)
    train = [r for r in ma[:-1] if "split" not in r]
    assert train == [r for r in mb[:-1] if "split" not in r]


def train_lines(run: Path) -> list[str]:
    return [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"split"' not in line]


def signal_inside(monkeypatch, where: str, iteration: int) -> None:
    """Deliver SIGINT to this process inside iteration `iteration`'s fast steps ("step") or inside
    the evaluation after it ("evaluation"): the timing the subprocess test above only hits by chance."""
    from ltm_ppl import train

    if where == "step":
        real_batch = train.train_batch

        def batch_then_signal(tokens, block, batch_size, seed, it):
            if it + 1 == iteration:
                os.kill(os.getpid(), signal.SIGINT)  # the handler sets the flag; the first fast step sees it
            return real_batch(tokens, block, batch_size, seed, it)
        monkeypatch.setattr(train, "train_batch", batch_then_signal)
    else:
        real_evaluate = train._evaluate

        def signal_then_evaluate(inference, data, cfg, done):
            if done == iteration:
                os.kill(os.getpid(), signal.SIGINT)
            return real_evaluate(inference, data, cfg, done)
        monkeypatch.setattr(train, "_evaluate", signal_then_evaluate)


@pytest.mark.parametrize("where, iteration, expected", [
    # iteration 4's fast steps, the last checkpoint at 2: iteration 3 must be committed now
    ("step", 4, "SIGINT: stopped during iteration 4 (its fast steps), with a checkpoint of iteration 3 committed"),
    ("step", 3, "SIGINT: stopped during iteration 3 (its fast steps), with a checkpoint of iteration 2 committed"),
    # iteration 4's evaluation (eval_interval 2): its training is done, its val record is skipped
    ("evaluation", 4, "SIGINT: stopped after iteration 4 (its evaluation skipped) with a checkpoint committed")])
def test_a_signal_inside_fast_steps_or_an_evaluation_commits_the_last_finished_iteration(
        tmp_path, config, monkeypatch, where, iteration, expected, torch_one_thread):
    run = tmp_path / "run"
    signal_inside(monkeypatch, where, iteration)
    result = run_cli("fit", "--config", config, "--out", run, "--iters", 8, "--lr-decay-iters", 100)
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == f"{expected}; resume with: ltm fit --resume {run}"
    done = checkpoint.trainer_state(checkpoint.latest_checkpoint(run))["iteration"]
    assert done == len(train_lines(run)) == (iteration - 1 if where == "step" else iteration)
    monkeypatch.undo()
    assert run_cli("fit", "--resume", run).exit_code == 0
    reference = run_cli("fit", "--config", config, "--out", tmp_path / "reference", "--iters", 8, "--lr-decay-iters", 100)
    assert reference.exit_code == 0, reference.output
    (wa, _, ma), (wb, _, mb) = final_state(run), final_state(tmp_path / "reference")
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)
    assert [r for r in ma[:-1] if "split" not in r] == [r for r in mb[:-1] if "split" not in r]
