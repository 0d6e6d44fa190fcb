"""The world of workers a run trains on: rank, size, who writes, which rows of a global batch are
whose; started from the launcher's environment.

- Pyro: torch.distributed, as torchrun sets it up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT): NCCL on CUDA, gloo on CPU. One process per device; a global batch of B windows
  gives worker r the rows [r B/N, (r + 1) B/N). The decoder is wrapped in DistributedDataParallel
  (pyro_backend.py), whose all-reduce runs in the slow step's backward only.
- NumPyro: one process per host, every local device in a Mesh over the batch axis (jax.sharding);
  several hosts through jax.distributed.initialize, which reads JAX_COORDINATOR_ADDRESS
  (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID, or detects Slurm (srun sets
  SLURM_NTASKS, SLURM_PROCID, SLURM_STEP_NODELIST) on its own. The jitted step is one global
  program: JAX moves the gradients, nothing here does.

Only rank 0 writes (run directory, checkpoints, metrics, progress bar, the closing lines, the
`error:` line); every rank runs the same checks, so a refusal stops every worker with exit 2.
Importing this module imports neither torch nor jax.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from .errors import LtmError


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    runtime: str | None = None  # None (one process), "torch" or "jax"
    devices: int = 1  # JAX: devices in the mesh, all processes together
    mesh: object = field(default=None, repr=False)

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def shards(self) -> int:
        """How many ways a global batch is split: torch workers, or JAX devices."""
        return self.devices if self.runtime == "jax" else self.size

    def local_rows(self, batch_size: int) -> slice:
        """This worker's rows of a global batch (torch); JAX feeds the global batch to the mesh."""
        if self.runtime != "torch":
            return slice(0, batch_size)
        share = batch_size // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def in_turn(self, load):
        """load() on the first worker, then on the others (they find its token cache built)."""
        if self.is_writer:
            out = load()
            self.barrier()
            return out
        self.barrier()
        return load()

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.shards:
            what = "devices" if self.runtime == "jax" else "workers"
            fewer = " (or show jax fewer devices: CUDA_VISIBLE_DEVICES=0)" if self.runtime == "jax" else ""
            raise LtmError(f"train.batch_size {batch_size} does not divide among {self.shards} {what}; "
                           f"use a multiple of {self.shards}{fewer}")

    # ----- collectives (no-ops on one process) ----------------------------------------------------
    def barrier(self) -> None:
        if self.runtime == "torch" and self.size > 1:
            import torch.distributed as dist

            dist.barrier()
        elif self.runtime == "jax" and self.size > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("ltm")

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's text on every rank (the name of a new run directory)."""
        if self.size == 1:
            return text
        if self.runtime == "torch":
            import torch.distributed as dist

            box = [text]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        from jax.experimental import multihost_utils

        raw = np.zeros(4096, np.uint8)
        data = (text or "").encode()[:4096]
        raw[: len(data)] = np.frombuffer(data, np.uint8)
        out = np.asarray(multihost_utils.broadcast_one_to_all(raw))
        return bytes(out[out != 0]).decode()

    def gather(self, value) -> list:
        """Every rank's (JSON-able) value, on every rank."""
        if self.size == 1:
            return [value]
        if self.runtime == "torch":
            import torch.distributed as dist

            out = [None] * self.size
            dist.all_gather_object(out, value)
            return out
        return [value]  # JAX: one program per host, launched alike; the mesh checks the shapes

    def agree(self, signum) -> bool:
        """Did any torch worker receive a stop signal? All stop after the same iteration, so none
        waits in an all-reduce for one that has left (JAX: one program, each process its own)."""
        if self.runtime != "torch" or self.size == 1:
            return signum is not None
        import torch
        import torch.distributed as dist

        flag = torch.tensor([0.0 if signum is None else 1.0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def mean(self, metrics: dict) -> dict:
        """Metrics averaged over the torch workers (equal shares: the global batch's mean)."""
        if self.runtime != "torch" or self.size == 1 or not metrics:
            return metrics
        import torch
        import torch.distributed as dist

        names = list(metrics)  # the step's order: metrics.jsonl reads the same on any worker count
        values = torch.tensor([float(metrics[k]) for k in names], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            values = values.cuda()
        dist.all_reduce(values)
        values = (values / self.size).cpu().tolist()
        flags = {k for k in names if isinstance(metrics[k], bool) or getattr(metrics[k], "dtype", None) == torch.bool}
        return {k: (v == 1.0 if k in flags else v) for k, v in zip(names, values)}  # a flag holds if it holds everywhere


_WORLD = World()


def world() -> World:
    return _WORLD


def env_rank() -> int:
    """This process's rank from the launcher's environment, before anything is started (for the
    `error:` line: only rank 0 prints it)."""
    for name in ("RANK", "JAX_PROCESS_ID", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0


def under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def under_jax_launcher() -> bool:
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or (_int_env("SLURM_NTASKS") > 1 and not under_torchrun())


def start(backend: str, device: str = "auto") -> World:
    """Start the world for `backend` from the environment (once per process); refuse a launcher
    that does not fit the backend."""
    global _WORLD
    if _WORLD.runtime is not None:
        return _WORLD
    if backend == "pyro":
        if os.environ.get("JAX_COORDINATOR_ADDRESS"):
            raise LtmError("JAX_COORDINATOR_ADDRESS is set (a jax.distributed launch) but --backend pyro runs on "
                           "torch.distributed: launch it with torchrun")
        if under_torchrun():
            _WORLD = _start_torch(device)
    else:
        if under_torchrun() and _int_env("WORLD_SIZE") > 1:
            raise LtmError(f"--backend {backend} does not run under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}): "
                           "launch one process per host with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
                           "JAX_PROCESS_ID set (or under srun), see README 'Training on many devices'")
        _WORLD = _start_jax(device)
    if not _WORLD.is_writer:  # tables, JSON and closing lines come from rank 0 alone
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    return _WORLD


def _start_torch(device: str) -> World:
    import torch
    import torch.distributed as dist

    local_rank = _int_env("LOCAL_RANK")
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank, runtime="torch")


def _start_jax(device: str) -> World:
    import jax

    if under_jax_launcher() and not jax.distributed.is_initialized():
        kwargs = {}
        if os.environ.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = _int_env("JAX_NUM_PROCESSES")
        if os.environ.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = _int_env("JAX_PROCESS_ID")
        if os.environ.get("JAX_COORDINATOR_ADDRESS"):
            kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
        try:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over gloo
        except Exception:  # noqa: BLE001 - an option this jax lacks: GPUs need it not
            pass
        jax.distributed.initialize(**kwargs)
    platform = "cpu" if device == "cpu" else None
    devices = jax.devices(platform) if platform else jax.devices()
    if len(devices) == 1 and not under_jax_launcher():  # plain single-device placement
        return World(runtime="jax", devices=1)
    from jax.sharding import Mesh

    mesh = Mesh(devices, ("batch",))
    return World(rank=jax.process_index(), size=jax.process_count(), runtime="jax", devices=len(devices), mesh=mesh)


def describe(w: World) -> str:
    if w.runtime == "jax" and w.mesh is not None:
        return (f"numpyro on {w.devices} device{'s' if w.devices > 1 else ''} in {w.size} process{'es' if w.size > 1 else ''} "
                "(batch sharded over a jax.sharding Mesh)")
    if w.runtime == "torch":
        return f"pyro on {w.size} worker{'s' if w.size > 1 else ''} (torch.distributed, DistributedDataParallel)"
    return ""


def fingerprint(cfg) -> str:
    """What every worker must agree on: the whole config, backend included."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)


def check_same_config(w: World, cfg) -> None:
    mine = fingerprint(cfg)
    prints = w.gather(mine)
    if any(p != mine for p in prints):
        other = next(json.loads(p) for p in prints if p != mine)
        ours = json.loads(mine)
        diff = sorted(f"{s}.{k}" for s in ours for k in ours[s] if other.get(s, {}).get(k) != ours[s][k])
        raise LtmError(f"the workers were launched with different settings ({', '.join(diff[:4])}); give every worker the same command")
