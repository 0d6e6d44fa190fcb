"""The run's life: create, open, resume, save, the newest committed checkpoint, metrics and format
migration; the only code that knows the run directory's layout (layout.py).

    layout.py       the names in a run directory; where a new run goes
    config_file.py  config.json: written with seeds and versions, read back checked
    checkpoints.py  the crash-safe commit of a checkpoint, the newest committed one read, pruning
    metrics.py      metrics.jsonl: appended, read, truncated on resume
    migrate.py      older formats: configs without newer settings, format-1 checkpoints
    staging.py      a new run built out of sight and renamed into place
    lock.py         one writer per run (an OS lock on the directory)
    handle.py       `Run`, with the above as its methods; loading weights into an inference object

Importing this package (and opening a run) loads no training code, torch or jax.
"""
from .checkpoints import (committed_checkpoints, latest_checkpoint, load_optimizer, load_weights, read_newest,
                          remove_debris, save_checkpoint, trainer_state)
from .config_file import library_versions, read_config, write_config
from .handle import Run, check_method_fits_run, load_inference, run_tokenizer, save_inference
from .layout import CHECKPOINT_FILES, CHECKPOINTS, IMPORTED, METRICS, STATE, TOKENIZER, checkpoint_name, is_run, new_run_dir
from .metrics import append_metrics, read_metrics, truncate_metrics
from .migrate import migrate_format_1
from .staging import commit_run, remove_unborn_runs, stage_run

__all__ = ["CHECKPOINTS", "CHECKPOINT_FILES", "IMPORTED", "METRICS", "STATE", "TOKENIZER", "Run", "append_metrics",
           "check_method_fits_run", "checkpoint_name", "commit_run", "committed_checkpoints", "is_run",
           "latest_checkpoint", "library_versions", "load_inference", "load_optimizer", "load_weights",
           "migrate_format_1", "new_run_dir", "read_config", "read_metrics", "read_newest", "remove_debris",
           "remove_unborn_runs", "run_tokenizer", "save_checkpoint", "save_inference", "stage_run", "trainer_state",
           "truncate_metrics", "write_config"]
