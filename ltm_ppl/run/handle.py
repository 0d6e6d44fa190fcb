"""`Run`: one run directory and its config, with the run's life as methods (create, open, resume,
save, the newest committed checkpoint, metrics, migration). Opening a run imports no training code
and neither torch nor jax: those load only when its weights go into an inference object."""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig, resolve
from ..data import load_tokenizer
from ..errors import LtmError
from ..inference import create, descriptor
from . import checkpoints, lock, metrics, migrate, staging
from .config_file import read_config, write_config
from .layout import TOKENIZER


def run_tokenizer(run: Path, cfg: RunConfig):
    tokenizer = load_tokenizer(run / TOKENIZER, cfg.data.tokenizer)
    # More tokens than embedding rows: token ids would overrun the embedding. Fewer is an imported
    # model's padded vocabulary (the published 50258 rows over GPT-2's 50257 tokens): ids the
    # tokenizer never produces, and generation masks.
    if cfg.model.vocab_size and tokenizer.vocab_size > cfg.model.vocab_size:
        raise LtmError(f"{run / 'tokenizer.json'} is damaged: {tokenizer.vocab_size} tokens where the model has "
                       f"{cfg.model.vocab_size} (config.json)")
    return tokenizer


def check_method_fits_run(cfg: RunConfig, trained_method: str) -> None:
    """A run's decoder either reads latents or not; refuse a method that needs the other kind."""
    method = cfg.inference.method
    wants_latent = descriptor(method).latent
    if not cfg.model.latent and wants_latent:
        raise LtmError(f"this run has no latent (trained with --inference {trained_method}); --inference {method} needs one")
    if cfg.model.latent and not wants_latent:
        raise LtmError(f"--inference {method} needs a decoder without latents; this run's decoder reads them (trained with --inference {trained_method})")


def load_inference(run: Path, cfg: RunConfig, with_optimizer: bool = False):
    """The inference object of a run with its newest committed checkpoint's weights (and optimiser state)."""
    def read(where: Path):  # every file from one checkpoint, even if a writer commits meanwhile
        return checkpoints.load_weights(where), checkpoints.load_optimizer(where) if with_optimizer else None

    weights, optimizer = checkpoints.read_newest(run, read)
    inference = create(cfg)
    inference.load_weights(weights)
    if with_optimizer:
        tensors, state = optimizer
        if state.get("backend", cfg.train.backend) != cfg.train.backend:
            raise LtmError(f"{run} was trained with --backend {state['backend']}; resume it with that backend")
        inference.load_optimizer_state(tensors, state)
    return inference


def save_inference(run: Path, inference, backend: str) -> Path:
    """Commit the inference object's weights and optimiser state as a checkpoint of its iteration."""
    tensors, scalars = inference.optimizer_state()
    return checkpoints.save_checkpoint(run, inference.weights(), tensors, dict(scalars, backend=backend))


# Settings a resume may change, each said in a notice and recorded in metrics.jsonl ([model],
# [data], the method and the backend are refused before this; --iters is how a run trains on).
QUIET_ON_RESUME = {"train.iters"}


@dataclass(frozen=True)
class Run:
    """A run directory and its config as stored (or, after create / resume, as now written)."""
    path: Path
    cfg: RunConfig
    record: dict  # config.json: format version, seeds, library versions, git revision, created

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """The run at `path` (refuses a folder that is not a run, or a damaged config.json)."""
        path = Path(path)
        cfg, record = read_config(path)
        return cls(path, cfg, record)

    @classmethod
    def create(cls, path: Path, cfg: RunConfig, tokenizer, inference) -> Run:
        """A new run at `path`, with its config, tokenizer and iteration-0 checkpoint: built out of
        sight under the writer lock, then renamed into place (the lock stays held: release() it)."""
        stage = staging.stage_run(path)
        try:
            lock.hold(stage)  # the same lock file (inode) once the folder is renamed into place
            tokenizer.save(stage / TOKENIZER)
            write_config(stage, cfg, cfg.data.tokenizer)
            save_inference(stage, inference, cfg.train.backend)
            staging.commit_run(stage, path)
            lock.moved(stage, path)
        except BaseException:
            lock.release(stage)
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return cls.open(path)

    def lock(self) -> None:
        """Take the run's writer lock (one `fit` at a time), or refuse naming the holder."""
        lock.hold(self.path)

    def release(self) -> None:
        lock.release(self.path)

    def latest_checkpoint(self) -> Path:
        return checkpoints.latest_checkpoint(self.path)

    @property
    def iteration(self) -> int:
        """The newest committed checkpoint's iteration."""
        return checkpoints.read_newest(self.path, checkpoints.trainer_state)["iteration"]

    def tokenizer(self, cfg: RunConfig | None = None):
        return run_tokenizer(self.path, cfg or self.cfg)

    def inference(self, cfg: RunConfig | None = None, with_optimizer: bool = False):
        """An inference object for cfg (this run's own by default) with the newest checkpoint's
        weights: torch or jax load here."""
        return load_inference(self.path, cfg or self.cfg, with_optimizer)

    def save(self, inference) -> Path:
        return save_inference(self.path, inference, self.cfg.train.backend)

    def metrics(self) -> list[dict]:
        return metrics.read_metrics(self.path)

    def append_metrics(self, record: dict) -> None:
        metrics.append_metrics(self.path, record)

    def resumed_config(self, cfg: RunConfig) -> RunConfig:
        """cfg resolved for going on with this run (the run's vocabulary where cfg has none, the
        horizon), or one line refusing a change of [model], [data] or the method."""
        resolved = resolve(cfg, cfg.model.vocab_size or self.cfg.model.vocab_size, cfg.model.latent)
        if resolved.model != self.cfg.model or resolved.data != self.cfg.data:
            raise LtmError(f"resuming {self.path} cannot change its [model] or [data] settings")
        if resolved.inference.method != self.cfg.inference.method:
            raise LtmError(f"{self.path} was trained with --inference {self.cfg.inference.method}; resume it with that method")
        return resolved

    def changes(self, cfg: RunConfig) -> dict[str, tuple]:
        """{"section.field": (stored value, new value)} for every [train] / [inference] setting
        that resuming with cfg changes, but --iters."""
        changed = {}
        for section in ("train", "inference"):
            old, new = getattr(self.cfg, section), getattr(cfg, section)
            for f in dataclasses.fields(old):
                name = f"{section}.{f.name}"
                if name not in QUIET_ON_RESUME and getattr(old, f.name) != getattr(new, f.name):
                    changed[name] = (getattr(old, f.name), getattr(new, f.name))
        return changed

    def resume(self, cfg: RunConfig, iteration: int, changed: dict[str, tuple]) -> None:
        """The writer's first writes of a resumed fit starting at `iteration` (every check passed):
        a format-1 run migrated, debris of killed saves removed, records after the checkpoint
        dropped, the changed settings recorded as an event, and cfg written as the run's config."""
        migrate.migrate_format_1(self.path)
        checkpoints.remove_debris(self.path)
        metrics.truncate_metrics(self.path, iteration)
        if changed:  # the run's history keeps what its config.json no longer says
            self.append_metrics({"iter": iteration, "event": "resume",
                                 "changed": {k: {"was": a, "now": b} for k, (a, b) in changed.items()}})
        write_config(self.path, cfg, cfg.data.tokenizer)
