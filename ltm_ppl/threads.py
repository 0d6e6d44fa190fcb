"""CPU threads of torch and XLA, set before either is imported.

Default: OMP_NUM_THREADS when set, else the cores this process may run on. Idle OpenMP threads
sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE unless set), so jobs sharing the cores wait
rather than spin against each other (two tiny fits at once on 2 busy cores: 189 s spinning,
21 s passive; docs/design.md).
`--threads N` (or `configure_threads(N)`) overrides both.
"""
from __future__ import annotations

import os
import sys

from .checks import require_positive


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
