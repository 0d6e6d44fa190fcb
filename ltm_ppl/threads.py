"""CPU threads of torch and XLA, set before either is imported.

Default: OMP_NUM_THREADS when set, else the cores this process may run on. How an idle OpenMP
thread waits (libgomp, torch's OpenMP, reads this once at start-up) is chosen by what the machine
is doing at start-up, unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set:
- enough idle cores for our threads: spin briefly (GOMP_SPINCOUNT=SPIN_WHEN_IDLE, ~0.1 ms) before
  sleeping, which a lone job needs to be fast (passive waiting cost the default fit 1.3-1.9x);
- cores already busy: sleep at once (OMP_WAIT_POLICY=PASSIVE), since any spinning against
  another job costs both several times over (docs/benchmarks.md, bench/thread_policy.py).
Neither changes a number: the wait policy decides only how threads idle, not how sums are split.
`--threads N` (or `configure_threads(N)`) sets the count; the wait policy is chosen the same way.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .checks import require_positive


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


SPIN_WHEN_IDLE = 10_000  # GOMP_SPINCOUNT: ~0.1 ms at libgomp's ~100k spins per ms
SAMPLE_SECONDS = 0.1  # how long start-up looks at the machine's idle time


def _cpu_times() -> tuple[float, float] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0.0), sum(fields[:8])  # idle + iowait


def idle_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores idle on average over the next `seconds` (this process sleeps meanwhile); None where
    /proc/stat cannot be read."""
    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


def _is_ltm(argv: list[str]) -> bool:
    """Whether a command line runs ltm-ppl: the `ltm` script or `python -m ltm_ppl`."""
    return any(Path(a).name == "ltm" for a in argv[:2]) or any(
        a == "-m" and b.split(".")[0] == "ltm_ppl" for a, b in zip(argv, argv[1:]))


def other_ltm_jobs() -> int:
    """ltm-ppl processes on this machine besides this one. Jobs started together sample an idle
    machine (each sleeps through the others' sample), so each must also see the others by name."""
    count = 0
    for proc in Path("/proc").glob("[0-9]*"):
        if proc.name == str(os.getpid()):
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue
        count += _is_ltm(argv) and state not in "TtZX"  # stopped or dead jobs take no core
    return count


def wait_policy(threads: int, idle: float | None, others: int) -> dict[str, str]:
    """The OpenMP waiting environment for `threads` threads when `idle` cores are idle and
    `others` other ltm jobs run: spin briefly where every thread has a core of its own and no
    other job may start spinning against us; sleep at once otherwise (or when unknown)."""
    if threads > 1 and others == 0 and idle is not None and idle >= threads - 0.25:
        return {"GOMP_SPINCOUNT": str(SPIN_WHEN_IDLE)}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def default_threads() -> int:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else available_cores()


def _xla_flags(current: str, threads: int) -> str:
    """XLA_FLAGS with the CPU thread settings replaced by `threads`, other flags kept. XLA has no
    thread-count flag of its own: --xla_cpu_multi_thread_eigen=false makes its CPU kernels
    single-threaded (what threads=1 needs); above 1 its own pool sizes itself to the cores.
    `intra_op_parallelism_threads=N` (no dashes: XLA refuses it as a flag, tolerates it as a
    word) records the request for whoever reads the environment."""
    kept = [f for f in current.split() if not f.lstrip("-").startswith(("xla_cpu_multi_thread_eigen", "intra_op_parallelism_threads"))]
    return " ".join(kept + [f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}",
                            f"intra_op_parallelism_threads={threads}"])


def configure_threads(threads: int | None = None) -> int:
    """Use `threads` CPU threads (None: the default above) in torch and in XLA. Environment first,
    so libraries imported later read it; torch, if already imported, is set directly when
    `threads` is given. XLA reads XLA_FLAGS once, when jax starts: set too late it is left as it
    is. Returns the count."""
    require_positive("--threads", threads)
    explicit = threads is not None
    threads = threads or default_threads()
    if not any(v in os.environ for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):  # the user's choice stands
        os.environ.update(wait_policy(threads, idle_cores() if threads > 1 else None, other_ltm_jobs()))
    if explicit or "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    has_thread_flags = "intra_op_parallelism_threads" in os.environ.get("XLA_FLAGS", "")
    if explicit or not has_thread_flags:
        if "jax" not in sys.modules:
            os.environ["XLA_FLAGS"] = _xla_flags(os.environ.get("XLA_FLAGS", ""), threads)
    if explicit and "torch" in sys.modules:  # the default leaves a torch already set up alone
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return threads
