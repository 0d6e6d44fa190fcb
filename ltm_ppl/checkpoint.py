"""The run directory: config, tokenizer, checkpoints and metrics, all without pickle.

    config.json             full config, seeds, library versions, git revision, format version
    tokenizer.json          the tokenizer (any kind), so a run needs nothing else to be read
    metrics.jsonl           one JSON object per logged iteration or evaluation (appended)
    checkpoints/00000040/   one committed checkpoint, named by its iteration:
        weights.safetensors    decoder weights in canonical torch names, tied embedding stored once
        optimizer.safetensors  optimiser moments and RNG state of the backend that trained
        trainer_state.json     iteration, backend and the checksums of the two safetensors files

Commit protocol (crash safety): a checkpoint is built in checkpoints/<iter>.tmp/, every file and
the directory fsynced, then renamed to checkpoints/<iter>/ (the one atomic commit step) and the
parent fsynced. Only then are older checkpoints pruned (renamed aside first, so a committed name
never holds a half-deleted directory). Readers take the highest committed <iter> and ignore
anything else (".tmp", hidden temporaries): debris that only `fit` removes. A new run is built
under a hidden sibling name with its iteration-0 checkpoint and renamed into place, so a kill
before that leaves no run at all.

Format 1 runs (before the checkpoints/ folder) keep the three checkpoint files at the top of the
run; they are read in place, and `fit --resume` migrates them into checkpoints/ first.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

from . import durable
from .config import FORMAT_VERSION, READABLE_FORMATS, RunConfig, config_from_dict
from .errors import LtmError

LIBRARIES = ("torch", "pyro-ppl", "jax", "jaxlib", "numpyro", "optax", "numpy", "tokenizers", "safetensors")


def library_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def is_run(path: Path) -> bool:
    return (path / "config.json").is_file()


def new_run_dir(out: str | None) -> Path:
    """Where a new run goes; refuses to reuse an existing run or a non-empty folder."""
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path, n = Path("runs") / stamp, 1
        while path.exists():
            n += 1
            path = Path("runs") / f"{stamp}-{n}"
        return path
    path = Path(out)
    if is_run(path):
        raise LtmError(f"--out {out} is an existing run; pass --resume {out} to continue it")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise LtmError(f"--out {out} exists and is not an empty directory")
    return path


def write_config(run: Path, cfg: RunConfig, tokenizer_name: str) -> None:
    record = {
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "tokenizer": tokenizer_name,
        "seeds": {"train": cfg.train.seed},
        "versions": library_versions(),
        "git_revision": git_revision(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    data = (json.dumps(record, indent=2) + "\n").encode()
    if (run / "config.json").exists():
        durable.atomic_replace(run / "config.json", data)
    else:  # a run being built out of sight
        durable.write_file(run / "config.json", data)


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise LtmError(f"{path.parent} has no {path.name}: not a complete run") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LtmError(f"{what} {path} is damaged (not valid JSON)") from None
    if not isinstance(value, dict):
        raise LtmError(f"{what} {path} is damaged (not a JSON object)")
    return value


def read_config(run: Path) -> tuple[RunConfig, dict]:
    if not run.is_dir():
        raise LtmError(f"run directory not found: {run}")
    if not is_run(run):
        raise LtmError(f"{run} is not a run directory (no config.json)")
    record = _read_json(run / "config.json", "config")
    if record.get("format_version") not in READABLE_FORMATS:
        raise LtmError(f"config {run / 'config.json'} has an unknown format version {record.get('format_version')!r}")
    if not isinstance(record.get("config"), dict):
        raise LtmError(f"config {run / 'config.json'} is damaged (no [config] object)")
    cfg = config_from_dict(record["config"])
    model = record["config"].get("model")
    if isinstance(model, dict) and "latent_rope" not in model:
        # Saved before the setting existed: trained with each layer's vectors spread over the block.
        cfg.model.latent_rope = "per_layer"
    if record["format_version"] == 1 and cfg.train.lr_decay_iters == 0:
        # Format 1 stored 0 for "the current --iters": the horizon its last stretch was trained to.
        cfg.train.lr_decay_iters = cfg.train.iters
    return cfg, record


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"
CHECKPOINT_FILES = ("weights.safetensors", "optimizer.safetensors", STATE)


def checkpoint_name(iteration: int) -> str:
    return f"{iteration:08d}"


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


def _remove_tree(path: Path) -> None:
    """Delete a directory that no reader looks at any more (renamed aside first by the caller)."""
    durable.fault_point(f"remove {path.name}")
    shutil.rmtree(path, ignore_errors=True)


def _retire(path: Path) -> None:
    """Take a directory out of the committed set by one rename, then delete it."""
    aside = durable.temporary_name(path, "old")
    durable.rename(path, aside)
    durable.fsync_dir(path.parent)
    _remove_tree(aside)


def save_checkpoint(run: Path, weights: dict, opt_tensors: dict, scalars: dict) -> Path:
    """Commit a checkpoint of iteration scalars["iteration"] (see the module's commit protocol);
    the previous one stays readable until this one is committed, and is pruned after."""
    weight_bytes = save({k: np.require(v, requirements="C") for k, v in weights.items()})
    opt_bytes = save({k: np.require(v, requirements="C") for k, v in opt_tensors.items()})
    state = dict(scalars, weights_sha256=_sha256(weight_bytes), optimizer_sha256=_sha256(opt_bytes))
    if (run / "metrics.jsonl").exists():  # the log up to this checkpoint is durable before it is
        durable.fsync_file(run / "metrics.jsonl")
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        folder.mkdir()
        durable.fsync_dir(run)
    final = folder / checkpoint_name(int(scalars["iteration"]))
    building = final.with_name(final.name + ".tmp")
    if building.exists():  # debris of a killed save of the same iteration
        _remove_tree(building)
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


def migrate_format_1(run: Path) -> None:
    """Move a format-1 run's top-level checkpoint into checkpoints/<iter>/ by the commit protocol
    (bytes copied unchanged); `fit --resume` does this before it writes anything else."""
    if committed_checkpoints(run) or not (run / STATE).exists():
        return
    iteration = trainer_state(run)["iteration"]
    folder = run / CHECKPOINTS
    folder.mkdir(exist_ok=True)
    building = folder / (checkpoint_name(iteration) + ".tmp")
    if building.exists():
        _remove_tree(building)
    building.mkdir()
    for name in CHECKPOINT_FILES:
        durable.write_file(building / name, (run / name).read_bytes())
    durable.fsync_dir(building)
    durable.rename(building, folder / checkpoint_name(iteration))
    durable.fsync_dir(folder)
    durable.fsync_dir(run)
    for name in CHECKPOINT_FILES:
        (run / name).unlink()


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_unborn_runs(parent: Path) -> None:
    """Delete the hidden .NAME.incomplete-PID-* folders that killed `fit`s left in `parent`
    (their process is gone; a live one is still building its run)."""
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        name = path.name
        if name.startswith(".") and ".incomplete-" in name and path.is_dir():
            pid = name.rsplit(".incomplete-", 1)[1].split("-")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def stage_run(path: Path, what: str = "the run directory") -> Path:
    """An empty hidden folder beside `path` in which a new run (or another folder that must
    appear whole, such as diagnose's) is built (see commit_run). Stages that killed processes
    left beside it are removed first."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_unborn_runs(path.parent)
        stage = durable.temporary_name(path, "incomplete")
        stage.mkdir()
    except OSError as exc:
        raise LtmError(f"cannot create {what} {path}: {exc.strerror}") from None
    return stage


def commit_run(stage: Path, path: Path, unsynced: tuple[str, ...] = ("tokenizer.json",)) -> None:
    """Make a fully built run (config, tokenizer, iteration-0 checkpoint) appear at `path` at once.
    unsynced: the files in the stage not yet fsynced (written without durable.write_file)."""
    for name in unsynced:
        durable.fsync_file(stage / name)
    durable.fsync_dir(stage)
    durable.rename(stage, path)  # onto nothing, or onto an empty directory the user made
    durable.fsync_dir(path.parent)


def trainer_state(where: Path) -> dict:
    """trainer_state.json of a checkpoint folder (or of a format-1 run)."""
    state = _read_json(where / STATE, "trainer state")
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

def append_metrics(run: Path, record: dict) -> None:
    with durable.naming(run / "metrics.jsonl"), open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")  # a torn line (disk full, kill) is dropped on resume


def read_metrics(run: Path) -> list[dict]:
    """Every record of metrics.jsonl in order (training, validation and event records), for readers
    such as `ltm plot`. A torn last line (a run killed or still writing) is left out."""
    path = run / "metrics.jsonl"
    if not path.exists():
        raise LtmError(f"{run} has no metrics.jsonl: it has logged no iteration yet")
    records = []
    for number, _, record in _metric_lines(path):
        if not isinstance(record, dict) or not isinstance(record.get("iter"), int):
            raise LtmError(f"{path} is damaged (line {number} is not a record with an iteration)")
        records.append(record)
    return records


def _metric_lines(path: Path):
    """(line number, line, parsed record) of each non-blank line; a torn last line (a killed or
    still-writing run) is skipped, any other line that is not JSON is damage."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            yield number, line, json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return
            raise LtmError(f"{path} is damaged (line {number} is not JSON)") from None


def truncate_metrics(run: Path, iteration: int) -> None:
    """Drop records logged after the checkpoint a resumed run starts from. metrics.jsonl is appended
    line by line (not renamed into place), so a torn last line from a killed run is dropped too."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return
    kept = [line for _, line, record in _metric_lines(path) if record.get("iter", 0) <= iteration]
    durable.atomic_replace(path, "".join(line + "\n" for line in kept).encode())
