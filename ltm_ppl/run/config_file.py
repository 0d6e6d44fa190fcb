"""config.json: the run's full config with its seeds, library versions, git revision and format."""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .. import durable
from ..config import FORMAT_VERSION, READABLE_FORMATS, RunConfig
from ..errors import LtmError
from .layout import CONFIG, is_run, read_json
from .migrate import stored_config

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
    if (run / CONFIG).exists():
        durable.atomic_replace(run / CONFIG, data)
    else:  # a run being built out of sight
        durable.write_file(run / CONFIG, data)


def read_config(run: Path) -> tuple[RunConfig, dict]:
    if not run.is_dir():
        raise LtmError(f"run directory not found: {run}")
    if not is_run(run):
        raise LtmError(f"{run} is not a run directory (no config.json)")
    record = read_json(run / CONFIG, "config")
    if record.get("format_version") not in READABLE_FORMATS:
        raise LtmError(f"config {run / CONFIG} has an unknown format version {record.get('format_version')!r}")
    if not isinstance(record.get("config"), dict):
        raise LtmError(f"config {run / CONFIG} is damaged (no [config] object)")
    return stored_config(record), record
