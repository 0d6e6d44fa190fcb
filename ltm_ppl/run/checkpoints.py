"""Checkpoints: write (the crash-safe commit), read (the newest committed one, checked), prune.

Commit protocol (crash safety): a checkpoint is built in checkpoints/<iter>.tmp/, every file and
the directory fsynced, then renamed to checkpoints/<iter>/ (the one atomic commit step) and the
parent fsynced. Only then are older checkpoints pruned (renamed aside first, so a committed name
never holds a half-deleted directory). Readers take the highest committed <iter> and ignore
anything else (".tmp", hidden temporaries): debris that only `fit` removes.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

from .. import durable
from ..errors import LtmError
from .layout import CHECKPOINT_FILES, CHECKPOINTS, METRICS, STATE, checkpoint_name, read_json

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def committed_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """The committed checkpoints of a run, oldest first: checkpoints/<digits>/ and nothing else."""
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(p.name), p) for p in folder.iterdir() if p.name.isdigit() and p.is_dir()]
    return sorted(found)


def latest_checkpoint(run: Path) -> Path:
    """The folder holding the run's newest committed checkpoint (the run itself for format 1)."""
    found = committed_checkpoints(run)
    if found:
        return found[-1][1]
    if (run / STATE).exists():  # format 1: the checkpoint files at the top of the run
        return run
    raise LtmError(f"{run} has no committed checkpoint ({CHECKPOINTS}/<iteration>/{STATE}): not a complete run")


def read_newest(run: Path, read, attempts: int = 50):
    """read(folder) on the run's newest committed checkpoint. A writer prunes a checkpoint only
    after committing a newer one, so a folder that vanished under this reader means a newer one is
    there to read: retry on it (readers take no lock and never block the writer)."""
    for _ in range(attempts):
        where = latest_checkpoint(run)
        try:
            return read(where)
        except (LtmError, OSError):
            if where.exists():  # still committed: the error is the checkpoint's own
                raise
    raise LtmError(f"{run}: its newest checkpoint was replaced {attempts} times while being read; try again")


def remove_tree(path: Path) -> None:
    """Delete a directory that no reader looks at any more (renamed aside first by the caller)."""
    durable.fault_point(f"remove {path.name}")
    shutil.rmtree(path, ignore_errors=True)


def _retire(path: Path) -> None:
    """Take a directory out of the committed set by one rename, then delete it."""
    aside = durable.temporary_name(path, "old")
    durable.rename(path, aside)
    durable.fsync_dir(path.parent)
    remove_tree(aside)


def save_checkpoint(run: Path, weights: dict, opt_tensors: dict, scalars: dict) -> Path:
    """Commit a checkpoint of iteration scalars["iteration"] (see the module's commit protocol);
    the previous one stays readable until this one is committed, and is pruned after."""
    weight_bytes = save({k: np.require(v, requirements="C") for k, v in weights.items()})
    opt_bytes = save({k: np.require(v, requirements="C") for k, v in opt_tensors.items()})
    state = dict(scalars, weights_sha256=_sha256(weight_bytes), optimizer_sha256=_sha256(opt_bytes))
    if (run / METRICS).exists():  # the log up to this checkpoint is durable before it is
        durable.fsync_file(run / METRICS)
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        folder.mkdir()
        durable.fsync_dir(run)
    final = folder / checkpoint_name(int(scalars["iteration"]))
    building = final.with_name(final.name + ".tmp")
    if building.exists():  # debris of a killed save of the same iteration
        remove_tree(building)
    building.mkdir()
    try:
        durable.write_file(building / "weights.safetensors", weight_bytes)
        durable.write_file(building / "optimizer.safetensors", opt_bytes)
        durable.write_file(building / STATE, (json.dumps(state, indent=2) + "\n").encode())
        durable.fsync_dir(building)
        if final.exists():  # never reached by `fit` (it saves each iteration once); keep the name free
            _retire(final)
        durable.rename(building, final)  # the commit
    except OSError:  # a full disk: give the space back, so that the last good checkpoint resumes
        shutil.rmtree(building, ignore_errors=True)
        raise
    durable.fsync_dir(folder)
    for _, older in committed_checkpoints(run)[:-1]:
        _retire(older)
    for name in CHECKPOINT_FILES:  # a migrated format-1 run's old copy, unread since the commit
        if (run / name).exists():
            durable.fault_point(f"remove {name}")
            (run / name).unlink()
    return final



def remove_debris(run: Path) -> None:
    """What killed saves leave behind: unfinished checkpoints/<iter>.tmp, pruned folders renamed
    aside, committed checkpoints older than the newest, hidden temporaries. Only `fit` calls this."""
    folder = run / CHECKPOINTS
    keep = latest_checkpoint(run) if committed_checkpoints(run) else None
    if folder.is_dir():
        for path in folder.iterdir():
            if path != keep and _made_by_fit(path.name):  # what a user put there stays
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in run.iterdir():
        if path.name.startswith(".") and (path.name.endswith(".tmp") or ".tmp-" in path.name):
            path.unlink(missing_ok=True)


def _made_by_fit(name: str) -> bool:
    """checkpoints/<iter>/, <iter>.tmp/ and the hidden .<iter>.<tag>-<pid>-<hex> names that
    save_checkpoint and durable.temporary_name give: nothing else in checkpoints/ is ours."""
    stem = name[1:].split(".", 1)[0] if name.startswith(".") else name.removesuffix(".tmp")
    return stem.isdigit() and len(stem) == len(checkpoint_name(0))



def trainer_state(where: Path) -> dict:
    """trainer_state.json of a checkpoint folder (or of a format-1 run)."""
    state = read_json(where / STATE, "trainer state")
    if not isinstance(state.get("iteration"), int):
        raise LtmError(f"trainer state {where / STATE} is damaged (no iteration)")
    return state


def _load_safetensors(path: Path, checksum: str | None) -> dict[str, np.ndarray]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LtmError(f"{path.parent} has no {path.name}: not a complete run") from None
    if checksum is not None and _sha256(data) != checksum:
        raise LtmError(f"{path} is damaged or truncated (checksum does not match {STATE})")
    try:
        return load(data)
    except Exception:  # safetensors raises its own SafetensorError for truncated headers/data
        raise LtmError(f"{path} is damaged or truncated (not a safetensors file)") from None


def load_weights(where: Path) -> dict[str, np.ndarray]:
    """Weights of a checkpoint folder from latest_checkpoint."""
    state = trainer_state(where)
    return _load_safetensors(where / "weights.safetensors", state.get("weights_sha256"))


def load_optimizer(where: Path) -> tuple[dict[str, np.ndarray], dict]:
    state = trainer_state(where)
    return _load_safetensors(where / "optimizer.safetensors", state.get("optimizer_sha256")), state
