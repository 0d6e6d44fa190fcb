"""How idle OpenMP threads wait: spin briefly on an idle machine, sleep at once when cores are busy
or other ltm jobs run, and never override what the user set (threads.py; bench/thread_policy.py
measures why)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ltm_ppl import threads

SPIN = {"GOMP_SPINCOUNT": str(threads.SPIN_WHEN_IDLE)}
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize("threads_, idle, others, expected", [
    (2, 2.0, 0, SPIN),       # a lone job on idle cores spins briefly
    (2, 1.9, 0, SPIN),       # the sample's own noise
    (2, 1.2, 0, PASSIVE),    # one core busy elsewhere: spinning would fight it
    (2, 2.0, 1, PASSIVE),    # another ltm job (started with us, so its sample saw idle cores too)
    (8, 63.0, 0, SPIN),      # a big machine with room to spare
    (1, 2.0, 0, PASSIVE),    # one thread has no one to wait for
    (2, None, 0, PASSIVE),   # no /proc/stat: the safe choice
])
def test_wait_policy_spins_only_with_a_core_per_thread_and_no_other_job(threads_, idle, others, expected):
    assert threads.wait_policy(threads_, idle, others) == expected


def test_the_spin_is_short():
    # ~100k spins per ms: anything near libgomp's own 300k (3 ms) made two jobs at once 4.8x slower
    assert 1_000 <= threads.SPIN_WHEN_IDLE <= 10_000


def test_idle_cores_is_a_share_of_this_machine():
    idle = threads.idle_cores(0.05)
    assert idle is not None and 0.0 <= idle <= os.cpu_count()


def test_an_ltm_command_line_is_recognised():
    assert threads._is_ltm(["/venv/bin/python", "/venv/bin/ltm", "fit"])
    assert threads._is_ltm(["ltm", "eval", "run"])
    assert threads._is_ltm(["python", "-m", "ltm_ppl", "fit"])
    assert threads._is_ltm(["python", "-X", "dev", "-m", "ltm_ppl.cli"])
    assert not threads._is_ltm(["python", "-m", "pytest", "tests/test_ltm.py"])
    assert not threads._is_ltm(["/usr/bin/bash", "run-ltm.sh"])


def test_another_running_ltm_process_is_seen(tmp_path):
    fake = tmp_path / "ltm"
    fake.symlink_to("/bin/sleep")
    before = threads.other_ltm_jobs()
    job = subprocess.Popen([str(fake), "30"])
    try:
        deadline = time.monotonic() + 5
        while threads.other_ltm_jobs() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threads.other_ltm_jobs() == before + 1
        job.send_signal(signal.SIGSTOP)  # a stopped job takes no core
        deadline = time.monotonic() + 5
        while threads.other_ltm_jobs() != before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threads.other_ltm_jobs() == before
    finally:
        job.kill()
        job.wait()


CHOICE = """
import json, os
from ltm_ppl.threads import configure_threads
configure_threads({threads})
print(json.dumps({{k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}}))
"""


def _choice(env: dict, threads_: int | None = 2) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "XLA_FLAGS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", CHOICE.format(threads=threads_)], env=clean | env,
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_the_users_wait_settings_stand():
    assert _choice({"OMP_WAIT_POLICY": "ACTIVE"}) == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": None}
    assert _choice({"GOMP_SPINCOUNT": "0"}) == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "0"}


def test_one_thread_sleeps_at_once():
    assert _choice({}, threads_=1) == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}


def test_configure_threads_applies_the_policy_it_measures(monkeypatch):
    # OMP_NUM_THREADS=2 and no --threads: two threads, and a torch already loaded is left alone
    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "XLA_FLAGS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "idle_cores", lambda seconds=0.1: 2.0)
    monkeypatch.setattr(threads, "other_ltm_jobs", lambda: 0)
    threads.configure_threads()
    assert os.environ.get("GOMP_SPINCOUNT") == str(threads.SPIN_WHEN_IDLE) and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setattr(threads, "other_ltm_jobs", lambda: 1)
    threads.configure_threads()
    assert os.environ.get("OMP_WAIT_POLICY") == "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ
