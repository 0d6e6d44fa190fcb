"""The GPU speed script runs as is on the next lent machine: its CPU rehearsal at the tiny shape
writes one JSON per configuration, both backends and both plain baselines, with a positive throughput (and the summary)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~25 s idle: the default suite stays under 10 minutes on 2 cores
def test_gpu_speed_script_rehearses_on_the_cpu(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_speed.py"), "--shape", "tiny", "--device", "cpu", "--batch", "2",
         "--repeats", "1", "--only", "ltm-m-pyro,ltm-m-numpyro,ltm-m-plain-torch,ltm-m-plain-jax", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for label in ("ltm-m-pyro", "ltm-m-numpyro", "ltm-m-plain-torch", "ltm-m-plain-jax"):
        result = json.loads((tmp_path / f"gpu-speed-{label}.json").read_text())
        assert "error" not in result and result["tokens_per_s"] > 0 and result["batch"] == 2, result
    assert len(json.loads((tmp_path / "gpu-speed-summary.json").read_text())) == 4


@pytest.mark.slow  # two inductor compiles on the CPU
def test_gpu_speed_pyro_compile_entries_run_the_whole_compiled_fast_step(tmp_path):
    """The GPU script's `--compile` entry runs the fast step compiled whole; its decoder-only entry
    (the route before) does not. Rehearsed on the CPU at the tiny shape, as the device will run it."""
    labels = ("ltm-m-pyro-compile", "ltm-m-pyro-compile-decoder-only")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_speed.py"), "--shape", "tiny", "--device", "cpu", "--batch", "2",
         "--repeats", "1", "--time-box", "600", "--only", ",".join(labels), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1300)
    assert out.returncode == 0, out.stderr
    for label, whole in zip(labels, (True, False)):
        result = json.loads((tmp_path / f"gpu-speed-{label}.json").read_text())
        assert "error" not in result and result["tokens_per_s"] > 0, result
        assert result["fast_step_compiled"] is whole, result


@pytest.mark.slow  # three short fits
def test_thread_policy_bench_times_settings_alone_and_in_pairs():
    """bench/thread_policy.py (issue 26) runs as documented: s/iteration per setting from each
    fit's own metrics, alone and two at once, with the ratio to the fastest."""
    base = [sys.executable, str(ROOT / "bench" / "thread_policy.py"), "--shape", "tiny", "--repeats", "1",
            "--iters", "8", "--skip", "4"]
    out = subprocess.run(base + ["--settings", "default,threads1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    alone = json.loads(out.stdout)
    assert alone["mode"] == "alone" and set(alone["results"]) == {"this:default", "this:threads1"}
    assert all(r["s_per_iter"] > 0 and r["vs_fastest"] >= 1.0 for r in alone["results"].values())
    out = subprocess.run(base + ["--settings", "passive", "--pair"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["results"]["this:passive"]["each_job"]) == 2
