"""The run directory: config, tokenizer, weights, optimiser state and metrics, all without pickle.

    config.json            full config, seeds, library versions, git revision, format version
    tokenizer.json         the tokenizer (any kind), so a run needs nothing else to be read
    weights.safetensors    decoder weights in canonical torch names, tied embedding stored once
    optimizer.safetensors  optimiser moments and RNG state of the backend that trained
    trainer_state.json     iteration and the checksums of the two safetensors files (written last)
    metrics.jsonl          one JSON object per logged iteration or evaluation

Every file is written to a temporary name and renamed into place; the checksums in
trainer_state.json catch a checkpoint whose files come from different iterations.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np

from .config import FORMAT_VERSION, RunConfig, config_from_dict
from .data.cache import atomic_write_bytes, atomic_write_text
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
    atomic_write_text(run / "config.json", json.dumps(record, indent=2) + "\n")


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
    if record.get("format_version") != FORMAT_VERSION:
        raise LtmError(f"config {run / 'config.json'} has an unknown format version {record.get('format_version')!r}")
    if not isinstance(record.get("config"), dict):
        raise LtmError(f"config {run / 'config.json'} is damaged (no [config] object)")
    return config_from_dict(record["config"]), record


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(run: Path, weights: dict, opt_tensors: dict, scalars: dict) -> None:
    from safetensors.numpy import save

    weight_bytes = save({k: np.require(v, requirements="C") for k, v in weights.items()})
    opt_bytes = save({k: np.require(v, requirements="C") for k, v in opt_tensors.items()})
    atomic_write_bytes(run / "weights.safetensors", weight_bytes)
    atomic_write_bytes(run / "optimizer.safetensors", opt_bytes)
    state = dict(scalars, weights_sha256=_sha256(weight_bytes), optimizer_sha256=_sha256(opt_bytes))
    atomic_write_text(run / "trainer_state.json", json.dumps(state, indent=2) + "\n")


def _load_safetensors(path: Path, checksum: str | None) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LtmError(f"{path.parent} has no {path.name}: not a complete run") from None
    if checksum is not None and _sha256(data) != checksum:
        raise LtmError(f"{path} is damaged or truncated (checksum does not match trainer_state.json)")
    try:
        return load(data)
    except Exception:  # safetensors raises its own SafetensorError for truncated headers/data
        raise LtmError(f"{path} is damaged or truncated (not a safetensors file)") from None


def trainer_state(run: Path) -> dict:
    state = _read_json(run / "trainer_state.json", "trainer state")
    if not isinstance(state.get("iteration"), int):
        raise LtmError(f"trainer state {run / 'trainer_state.json'} is damaged (no iteration)")
    return state


def load_weights(run: Path) -> dict[str, np.ndarray]:
    state = trainer_state(run)
    return _load_safetensors(run / "weights.safetensors", state.get("weights_sha256"))


def load_optimizer(run: Path) -> tuple[dict[str, np.ndarray], dict]:
    state = trainer_state(run)
    return _load_safetensors(run / "optimizer.safetensors", state.get("optimizer_sha256")), state


def append_metrics(run: Path, record: dict) -> None:
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")


def truncate_metrics(run: Path, iteration: int) -> None:
    """Drop records logged after the checkpoint a resumed run starts from. metrics.jsonl is appended
    line by line (not renamed into place), so a torn last line from a killed run is dropped too."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # a torn final write
            raise LtmError(f"{path} is damaged (line {number} is not JSON)") from None
        if record.get("iter", 0) <= iteration:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
