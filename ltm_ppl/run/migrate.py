"""Format migration: configs saved before a setting existed, and format-1 runs (the checkpoint
files at the top of the run, before checkpoints/) moved into checkpoints/<iter>/."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import durable
from ..config import RunConfig, config_from_dict
from .checkpoints import committed_checkpoints, remove_tree, trainer_state
from .layout import CHECKPOINT_FILES, CHECKPOINTS, STATE, checkpoint_name


# Settings that runs saved before kept in config.json and that no longer exist: dropped on read.
# inference.report_fixed_noise (always false in a saved run) became bound's at_fast_noise argument.
REMOVED = {"inference": ("report_fixed_noise",)}


def _without_removed(config: dict) -> dict:
    out = dict(config)
    for section, keys in REMOVED.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def stored_config(record: dict) -> RunConfig:
    """The config of a config.json record (format version and [config] object checked), with the
    settings that older formats left out as they were when the run was trained."""
    cfg = config_from_dict(_without_removed(record["config"]))
    model = record["config"].get("model")
    if isinstance(model, dict) and "latent_rope" not in model:
        # Saved before the setting existed: trained with each layer's vectors spread over the block.
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, latent_rope="per_layer"))
    if record["format_version"] == 1 and cfg.train.lr_decay_iters == 0:
        # Format 1 stored 0 for "the current --iters": the horizon its last stretch was trained to.
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr_decay_iters=cfg.train.iters))
    return cfg


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
        remove_tree(building)
    building.mkdir()
    for name in CHECKPOINT_FILES:
        durable.write_file(building / name, (run / name).read_bytes())
    durable.fsync_dir(building)
    durable.rename(building, folder / checkpoint_name(iteration))
    durable.fsync_dir(folder)
    durable.fsync_dir(run)
    for name in CHECKPOINT_FILES:
        (run / name).unlink()
