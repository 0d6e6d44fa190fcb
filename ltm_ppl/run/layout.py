"""The run directory's names: the one place that knows them.

    config.json             full config, seeds, library versions, git revision, format version
    tokenizer.json          the tokenizer (any kind), so a run needs nothing else to be read
    metrics.jsonl           one JSON object per logged iteration or evaluation (appended)
    checkpoints/00000040/   one committed checkpoint, named by its iteration:
        weights.safetensors    decoder weights in canonical torch names, tied embedding stored once
        optimizer.safetensors  optimiser moments and RNG state of the backend that trained
        trainer_state.json     iteration, backend and the checksums of the two safetensors files
    imported.json           `ltm import` only: the published checkpoint it came from

All of it without pickle. Format 1 runs (before the checkpoints/ folder) keep the three checkpoint
files at the top of the run; they are read in place, and `fit --resume` migrates them (migrate.py).
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from ..errors import LtmError

CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"
IMPORTED = "imported.json"  # `ltm import`: what the run was imported from (source, iteration, model_args)
CHECKPOINT_FILES = ("weights.safetensors", "optimizer.safetensors", STATE)


def checkpoint_name(iteration: int) -> str:
    return f"{iteration:08d}"


def is_run(path: Path) -> bool:
    return (path / CONFIG).is_file()


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


def read_json(path: Path, what: str) -> dict:
    """One of the run's JSON objects (config.json, trainer_state.json), each failure one LtmError."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise LtmError(f"{path.parent} has no {path.name}: not a complete run") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LtmError(f"{what} {path} is damaged (not valid JSON)") from None
    if not isinstance(value, dict):
        raise LtmError(f"{what} {path} is damaged (not a JSON object)")
    return value

