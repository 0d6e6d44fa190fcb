"""Training, resuming and evaluating on several workers gives what one worker gives.

Real launches through the real entry points, one thread per process: `python -m
torch.distributed.run --nproc_per_node 2 -m ltm_ppl ...` (gloo on the CPU) for Pyro, and two host
devices (--xla_force_host_platform_device_count=2, in a fresh process: JAX fixes its device count
when it starts) for NumPyro. Tolerance of "the same weights": 1e-5 absolute after 4 iterations of
the tiny model; observed 1.2e-7 (torch, 2 workers) and 6.8e-7 (JAX, 2 devices), float32
reduction order: the noise is the same draw (noise.py), only sums are split differently.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
import subprocess

import numpy as np
import pytest
from helpers import TINY_TOML

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5

pytestmark = pytest.mark.slow  # each launch starts fresh interpreters: ~10-20 s per test on 2 cores

# fast_lr 0.03: Adam's first fast steps move every coordinate by about +-fast_lr whatever the
# gradient's size, so at the default 0.34 the all-reduce's rounding (~1e-7) can decide the sign of a
# step of a near-zero gradient, and the weights parted by 0.07 within four iterations (measured). These tests check data order and noise
# keying across worker counts, which need a trajectory that rounding cannot flip.
FOUR_ITERS = TINY_TOML.replace("iters = 60", "iters = 4").replace("eval_interval = 60", "eval_interval = 4") \
    .replace("checkpoint_interval = 20", "checkpoint_interval = 2").replace("[inference]\n", "[inference]\nfast_lr = 0.03\n")


def env(devices: int = 1) -> dict:
    forced = f"--xla_force_host_platform_device_count={devices} " if devices > 1 else ""
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK")}
    # The device-count flag goes first: XLA stops reading flags at the thread word that follows.
    return clean | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                    "XLA_FLAGS": forced + "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def ltm(*args, devices: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ltm_ppl", *map(str, args)], env=env(devices), capture_output=True,
                          text=True, timeout=300)


def torchrun(*args, nproc: int = 2, prefix=()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *prefix]
    if not prefix:
        cmd += ["-m", "ltm_ppl"]
    return subprocess.run(cmd + [str(a) for a in args], env=env(), capture_output=True, text=True, timeout=300)


def weights(run: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(sorted(glob.glob(f"{run}/checkpoints/*/weights.safetensors"))[-1])


def assert_same_weights(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    assert worst < ATOL, f"weights differ by {worst}"
    return worst


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "four.toml"
    path.write_text(FOUR_ITERS)
    return path


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, toml) -> Path:
    """The reference: 4 iterations of Pyro local on one process."""
    run = tmp_path_factory.mktemp("runs") / "one"
    out = ltm("fit", "--config", toml, "--data", "builtin:kjv", "--out", run, "--quiet")
    assert out.returncode == 0, out.stderr
    return run


def test_two_torch_workers_train_like_one(one_worker, toml, tmp_path):
    run = tmp_path / "two"
    out = torchrun("fit", "--config", toml, "--data", "builtin:kjv", "--out", run, "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("pyro on 2 workers") == 1  # one voice: rank 0's
    assert out.stdout.count(f"run: {run}") == 1
    assert_same_weights(one_worker, run)
    # One writer: every record once, the metrics of the whole global batch.
    ours, theirs = records(run), records(one_worker)
    assert [r["iter"] for r in ours] == [r["iter"] for r in theirs]
    for a, b in zip(ours, theirs):
        for key in ("loss", "nll", "kl", "grad_norm", "nll_per_token"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6)


def test_trained_on_two_workers_resumes_on_one(one_worker, toml, tmp_path):
    """2 iterations on 2 workers, then 2 more on one: the same data order and weights as 4 on one."""
    run = tmp_path / "half"
    out = torchrun("fit", "--config", toml, "--data", "builtin:kjv", "--out", run, "--iters", 2, "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    out = ltm("fit", "--resume", run, "--iters", 4, "--quiet")
    assert out.returncode == 0, out.stderr
    assert_same_weights(one_worker, run)


def test_trained_on_two_workers_resumes_on_three(toml, tmp_path):
    """A batch of 6: 2 iterations on 2 workers, 2 more on 3, against 4 on one."""
    one, run = tmp_path / "one", tmp_path / "two-then-three"
    args = ("--config", toml, "--data", "builtin:kjv", "--batch-size", 6, "--quiet")
    assert ltm("fit", *args, "--out", one).returncode == 0
    out = torchrun("fit", *args, "--out", run, "--iters", 2)
    assert out.returncode == 0, out.stderr[-3000:]
    out = torchrun("fit", "--resume", run, "--iters", 4, "--quiet", nproc=3)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pyro on 3 workers" in out.stdout
    assert_same_weights(one, run)
    train = lambda run: [(r["iter"], r["loss"]) for r in records(run) if "split" not in r]  # noqa: E731
    assert [i for i, _ in train(run)] == [1, 2, 3, 4]
    assert np.allclose([x for _, x in train(run)], [x for _, x in train(one)], rtol=1e-5)


@pytest.mark.parametrize("method", [("--inference", "amortized"), ("--inference", "local", "--init", "amortized")],
                         ids=["amortized", "semi-amortized"])
def test_encoder_trains_on_two_workers_like_one(method, toml, tmp_path):
    """The encoder too (DDP, its ELBO's eps keyed per sequence): the same weights, encoder.* included."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ("fit", "--config", toml, "--data", "builtin:kjv", *method, "--iters", 3, "--quiet", "--out")
    a = ltm(*args, one)
    assert a.returncode == 0, a.stderr
    b = torchrun(*args, two)
    assert b.returncode == 0, b.stderr[-3000:]
    assert any(k.startswith("encoder.") for k in weights(two))
    assert_same_weights(one, two)


def test_sharded_eval_and_compare_match_one_worker(one_worker):
    """10 windows in batches of 4 (the last one split 1 + 1): the same corpus-level number."""
    args = ("eval", one_worker, "--max-windows", 10, "--batch-size", 4, "--samples", 2, "--json", "--quiet")
    alone, shared = ltm(*args), torchrun(*args)
    assert alone.returncode == 0 and shared.returncode == 0, shared.stderr[-3000:]
    a, b = json.loads(alone.stdout), json.loads(shared.stdout)  # one JSON object: rank 0 alone prints
    for key in ("nll_per_token", "kl_per_sequence", "per_sequence_mean_perplexity"):
        assert b["rows"][0][key] == pytest.approx(a["rows"][0][key], rel=1e-5)
    assert b["num_sequences"] == a["num_sequences"] == 10
    args = ("compare", one_worker, one_worker, "--max-windows", 6, "--batch-size", 4, "--json", "--quiet")
    alone, shared = ltm(*args), torchrun(*args)
    assert alone.returncode == 0 and shared.returncode == 0, shared.stderr[-3000:]
    a, b = json.loads(alone.stdout), json.loads(shared.stdout)
    assert b["rows"][0]["nll_per_token"] == pytest.approx(a["rows"][0]["nll_per_token"], rel=1e-5)


def test_fast_steps_do_not_all_reduce(tmp_path, toml):
    """DDP's all-reduce runs in the slow step only: the same reductions with 1 and 5 fast steps."""
    script = tmp_path / "count.py"
    script.write_text(COUNT_REDUCTIONS.format(toml=toml))
    out = torchrun(prefix=(str(script),))
    assert out.returncode == 0, out.stderr[-3000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["5"] == counts["1"] > 0


COUNT_REDUCTIONS = """
import json, sys
from ltm_ppl import distributed
from ltm_ppl.config import RunConfig
from ltm_ppl.config import build_config
from ltm_ppl.inference import create

cfg = build_config(None, None, "{toml}", {{}})
cfg.model.vocab_size, cfg.model.latent, cfg.train.device = 64, True, "cpu"
world = distributed.start("pyro", "cpu")
import numpy as np
counts = {{}}
for steps in (1, 5):
    cfg.inference.steps = steps
    inference = create(cfg)
    calls = [0]

    def hook(state, bucket):
        calls[0] += 1
        import torch.distributed as dist
        return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0] / world.size)

    inference.ddp.register_comm_hook(None, hook)
    batch = np.random.default_rng(0).integers(0, 64, (4, 33))
    for _ in range(2):
        inference.step(batch)
    counts[str(steps)] = calls[0]
if world.is_writer:
    sys.__stdout__.write(json.dumps(counts) + "\\n")
# Leave together, as `ltm fit` does: a worker that exits while the other still talks to it aborts
# now and then in gloo's teardown ("terminate called without an active exception"; 1 run in 4 here).
world.barrier()
"""


def test_two_host_devices_train_like_one(tmp_path, toml):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ("fit", "--backend", "numpyro", "--config", toml, "--data", "builtin:kjv", "--quiet", "--out")
    a, b = ltm(*args, one), ltm(*args, two, devices=2)
    assert a.returncode == 0 and b.returncode == 0, b.stderr
    assert "numpyro on 2 devices in 1 process" in b.stdout
    assert "numpyro on" not in a.stdout  # one device: nothing to say
    assert_same_weights(one, two)


def test_trained_on_two_host_devices_resumes_on_one(tmp_path, toml):
    """NumPyro: 2 iterations on 2 host devices, then 2 more on one, against 4 unbroken on one."""
    one, run = tmp_path / "one", tmp_path / "half"
    args = ("fit", "--backend", "numpyro", "--config", toml, "--data", "builtin:kjv", "--quiet", "--out")
    a = ltm(*args, one)
    assert a.returncode == 0, a.stderr
    b = ltm(*args, run, "--iters", 2, devices=2)
    assert b.returncode == 0 and "numpyro on 2 devices in 1 process" in b.stdout, b.stderr
    c = ltm("fit", "--resume", run, "--iters", 4, "--quiet")
    assert c.returncode == 0, c.stderr
    assert_same_weights(one, run)
    train = lambda run: [(r["iter"], r["loss"]) for r in records(run) if "split" not in r]  # noqa: E731
    assert [i for i, _ in train(run)] == [i for i, _ in train(one)]
    assert np.allclose([x for _, x in train(run)], [x for _, x in train(one)], rtol=1e-5)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_jax_processes_train_like_one(tmp_path, toml):
    """jax.distributed on the CPU (gloo): two processes of one device each form one Mesh."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ("-m", "ltm_ppl", "fit", "--backend", "numpyro", "--config", toml, "--data", "builtin:kjv", "--quiet", "--out")
    assert ltm(*args[2:], one).returncode == 0
    port = free_port()
    procs = [subprocess.Popen([sys.executable, *map(str, args), two], env=env() | {
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "numpyro on 2 devices in 2 processes" in outs[0][0]
    assert "run:" not in outs[1][0] and "numpyro on" not in outs[1][0]  # the second process prints nothing of ours
    assert_same_weights(one, two)
    assert [r["iter"] for r in records(two)] == [r["iter"] for r in records(one)]


@pytest.mark.parametrize("case", ["indivisible batch", "numpyro under torchrun", "different settings per worker",
                                  "resume with another model"])
def test_bad_launches_fail_on_every_worker_with_one_line(case, toml, tmp_path, one_worker):
    run = tmp_path / "never"
    base = ("fit", "--config", toml, "--data", "builtin:kjv", "--out", run, "--quiet")
    before = sorted((p.relative_to(one_worker), p.stat().st_mtime_ns) for p in one_worker.rglob("*"))
    if case == "resume with another model":
        out, expect = torchrun("fit", "--resume", one_worker, "--iters", 6, "--attention-window", 4), "cannot change a run"
    elif case == "indivisible batch":
        out, expect = torchrun(*base, "--batch-size", 7), "does not divide among 2 workers"
    elif case == "numpyro under torchrun":
        out, expect = torchrun(*base, "--backend", "numpyro"), "does not run under torchrun"
    else:
        line = " ".join(map(str, base))
        out = torchrun(prefix=("--no-python", "sh", "-c", f'exec {sys.executable} -m ltm_ppl {line} --seed $((RANK + 1))'))
        expect = "different settings (train.seed)"
    assert out.returncode != 0
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and expect in lines[0], out.stderr[-3000:]
    assert f"{ROOT}/ltm_ppl/" not in out.stderr  # no traceback of ours (torchrun prints its own summary)
    assert not run.exists()
    assert sorted((p.relative_to(one_worker), p.stat().st_mtime_ns) for p in one_worker.rglob("*")) == before


def test_gpu_check_script_runs_on_the_cpu(tmp_path):
    """bench/gpu_distributed.py at a tiny shape: all four runs start, train and report tokens/s."""
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_distributed.py"), "--device", "cpu", "--shape", "tiny",
           "--iters", "5", "--skip", "2", "--out", str(tmp_path / "report.json")]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    what = [r["what_ran"] for r in report["runs"]]
    assert what[1].startswith("pyro on 1 worker") and what[3].startswith("numpyro on 1 device in 1 process")
    assert all(r["tokens_per_s"] > 0 for r in report["runs"])


def test_sigterm_stops_every_worker_after_the_same_iteration(toml, tmp_path):
    """torchrun forwards SIGTERM: the workers agree on the iteration to stop after, rank 0 commits
    a checkpoint there and says so once, and the run resumes on one worker."""
    import signal
    import time

    run = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ltm_ppl", "fit",
           "--config", str(toml), "--data", "builtin:kjv", "--out", str(run), "--iters", "100000", "--quiet"]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(records(run)) >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    said = [line for line in err.splitlines() if "stopped after iteration" in line]
    assert len(said) == 1, err[-3000:]
    done = max(r["iter"] for r in records(run))
    assert f"stopped after iteration {done} " in said[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"{done:08d}"]
    out = ltm("fit", "--resume", run, "--iters", done + 1, "--quiet")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_langevin_trains_on_two_workers_like_one(kernel, toml, tmp_path):
    """Chain starts, proposals / momenta and accept uniforms keyed per sequence: the same weights."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ("fit", "--config", toml, "--data", "builtin:kjv", "--inference", "langevin", "--kernel", kernel,
            "--leapfrog-steps", 2, "--iters", 3, "--quiet", "--out")
    a = ltm(*args, one)
    assert a.returncode == 0, a.stderr
    b = torchrun(*args, two)
    assert b.returncode == 0, b.stderr[-3000:]
    assert_same_weights(one, two)


def test_a_writer_killed_mid_commit_takes_the_job_down_and_keeps_the_last_checkpoint(toml, tmp_path):
    """Rank 0 is SIGKILLed just before the rename that commits the last checkpoint (durable.py's
    fault hook; only the writer passes it): torchrun ends the job non-zero, the other worker does
    not hang, and the run resumes on one worker from iteration 2 to the one-worker weights."""
    trace = tmp_path / "trace.txt"
    args = ("fit", "--config", toml, "--data", "builtin:kjv", "--quiet")
    env_trace = {"LTM_FAULT_TRACE": str(trace)}
    counted = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "-m", "ltm_ppl", *map(str, args), "--out", str(tmp_path / "counted")],
                             env=env() | env_trace, capture_output=True, text=True, timeout=300)
    assert counted.returncode == 0, counted.stderr[-3000:]
    steps = trace.read_text().splitlines()
    last_commit = max(int(line.split()[0]) for line in steps if line.endswith(".tmp -> 00000004"))
    run = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "ltm_ppl", *map(str, args), "--out", str(run)],
                            env=env() | {"LTM_FAULT_KILL_AT": str(last_commit)}, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stderr or "Signal 9" in killed.stderr or "exitcode" in killed.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")) \
        == ["00000002", "00000004.tmp"]  # iteration 4 never committed; 2 is the last good one
    resumed = ltm("fit", "--resume", run, "--iters", 4, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    one = tmp_path / "one"
    assert ltm(*args, "--out", one).returncode == 0
    assert_same_weights(one, run)
