"""A study grid read from TOML: one base recipe, points that each change a few settings, seeds, and
how every run is evaluated. Only parsing and checking here (no torch, no jax); study.py runs it.

    [study]
    seeds = [0]                 # every point, unless the point names its own
    eval_steps = [1, 4, 16, 64] # test-time T: one ELBO row (with KL per window, active units) each
    iwae_samples = [1, 16, 128] # K of IWAE_K ...
    iwae_steps = [16]           # ... at these T (default: eval_steps)
    eval_windows = 32           # val windows every number covers
    twins = true                # the AR twin (--inference none, same shapes and tokens) of each point
    lr_grid = [3e-4, 1e-3]      # optional: each model (LTM, each twin) trained at every lr, the lr
                                # chosen per model by its bound on the selection windows ...
    select_windows = 32         # ... val windows eval_windows .. eval_windows + this - 1 (default:
                                # eval_windows), disjoint from the reported ones

    [base.model]                # a run TOML's sections, under [base]
    d_model = 64
    [base.train]
    iters = 200

    [[point]]
    name = "base"               # no `set`: the base recipe itself

    [[point]]
    name = "T8"
    set = { "inference.steps" = 8 }
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .config import RunConfig, SECTIONS, apply_overrides, validate
from .errors import LtmError
from .inference import descriptor, methods, training_flops_per_token

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]{0,63}$")  # a point's name is a file name too
STUDY_KEYS = {"seeds", "eval_steps", "iwae_samples", "iwae_steps", "eval_windows", "twins", "batch_size", "flops_twins",
              "lr_grid", "select_windows"}
# Settings a twin without latents does not read: twins that differ only in these are one run.
NOT_READ_BY_TWIN = ("model.n_z", "model.encoder_layers", "model.latent", "model.cross_out_zero", "model.latent_rope")


@dataclass
class Point:
    name: str
    settings: dict[str, object]  # "section.field" -> value, over the base
    seeds: list[int]


@dataclass
class Grid:
    base: dict[str, object]  # "section.field" -> value, over RunConfig's defaults
    points: list[Point]
    eval_steps: list[int] = field(default_factory=lambda: [16])
    iwae_samples: list[int] = field(default_factory=lambda: [1, 16])
    iwae_steps: list[int] | None = None  # None: eval_steps
    eval_windows: int = 32
    batch_size: int | None = None  # eval batch (None: each run's)
    twins: bool = True
    flops_twins: bool = False  # also the same-window twin trained for the LTM's training FLOPs
    lr_grid: list[float] | None = None  # None: every run at its config's train.lr (no selection)
    select_windows: int | None = None  # None: eval_windows

    def selection_windows(self) -> range:
        """The val windows that choose the learning rate: the ones after the reported windows
        (range(eval_windows)), so the choice is never scored on what the table reports."""
        return range(self.eval_windows, self.eval_windows + (self.select_windows or self.eval_windows))

    def config(self, point: Point, seed: int) -> RunConfig:
        """The point's run config: defaults < base < point < seed (checked)."""
        cfg = apply_overrides(RunConfig(), self.base)
        apply_overrides(cfg, point.settings)
        cfg.train.seed = seed

        return validate(cfg, methods())


def _flatten(table: dict, prefix: str = "") -> dict[str, object]:
    """Nested tables and quoted dotted keys alike -> {"section.field": value}."""
    flat = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _checked_settings(table, where: str) -> dict[str, object]:
    if not isinstance(table, dict):
        raise LtmError(f"{where} must be a table of settings")
    settings = _flatten(table)
    for dotted, value in settings.items():
        parts = dotted.split(".")
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise LtmError(f"{where}: {dotted!r} is not a setting (section.field, sections {', '.join(SECTIONS)})")
        section, name = parts
        if name not in typing.get_type_hints(SECTIONS[section]):
            raise LtmError(f"{where}: unknown setting {dotted}")
        if dotted == "train.seed":
            raise LtmError(f"{where}: set seeds with `seeds = [...]`, not train.seed")
        apply_overrides(RunConfig(), {dotted: value})  # the type check, naming the setting
    return settings


def _int_list(value, where: str, minimum: int) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value):
        raise LtmError(f"{where} must be a non-empty list of integers >= {minimum}, got {value!r}")
    return list(value)


def _lr_list(value, where: str) -> list[float]:
    """A non-empty list of distinct positive finite numbers (TOML integers allowed), as floats."""
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value):
        raise LtmError(f"{where} must be a non-empty list of positive numbers, got {value!r}")
    lrs = [float(v) for v in value]
    if len(set(lrs)) != len(lrs):
        raise LtmError(f"{where} repeats a learning rate: {value!r}")
    return lrs


def parse_grid(raw: dict, source: str = "grid") -> Grid:
    """A Grid from a parsed TOML document; every mistake is one LtmError naming where it is."""
    unknown = set(raw) - {"study", "base", "point"}
    if unknown:
        raise LtmError(f"{source}: unknown table(s) {', '.join(sorted(unknown))} (known: study, base, point)")
    study = raw.get("study", {})
    if not isinstance(study, dict):
        raise LtmError(f"{source}: [study] must be a table")
    bad = set(study) - STUDY_KEYS
    if bad:
        raise LtmError(f"{source}: unknown [study] key(s) {', '.join(sorted(bad))} (known: {', '.join(sorted(STUDY_KEYS))})")
    seeds = _int_list(study.get("seeds", [0]), f"{source}: study.seeds", 0)
    grid = Grid(base=_checked_settings(raw.get("base", {}), f"{source}: [base]"), points=[],
                eval_steps=_int_list(study.get("eval_steps", [16]), f"{source}: study.eval_steps", 1),
                iwae_samples=_int_list(study.get("iwae_samples", [1, 16]), f"{source}: study.iwae_samples", 1))
    if "iwae_steps" in study:
        grid.iwae_steps = _int_list(study["iwae_steps"], f"{source}: study.iwae_steps", 1)
    grid.eval_windows = _int_list([study.get("eval_windows", 32)], f"{source}: study.eval_windows", 1)[0]
    if "batch_size" in study:
        grid.batch_size = _int_list([study["batch_size"]], f"{source}: study.batch_size", 1)[0]
    twins = study.get("twins", True)
    if not isinstance(twins, bool):
        raise LtmError(f"{source}: study.twins must be true or false, got {twins!r}")
    grid.twins = twins
    flops_twins = study.get("flops_twins", False)
    if not isinstance(flops_twins, bool):
        raise LtmError(f"{source}: study.flops_twins must be true or false, got {flops_twins!r}")
    grid.flops_twins = flops_twins
    if "lr_grid" in study:
        grid.lr_grid = _lr_list(study["lr_grid"], f"{source}: study.lr_grid")
    if "select_windows" in study:
        if grid.lr_grid is None:
            raise LtmError(f"{source}: study.select_windows needs study.lr_grid (the windows choose the learning rate)")
        grid.select_windows = _int_list([study["select_windows"]], f"{source}: study.select_windows", 1)[0]
    points = raw.get("point", [])
    if not isinstance(points, list) or not points:
        raise LtmError(f"{source}: no points (add [[point]] tables, each with a name)")
    for i, p in enumerate(points):
        where = f"{source}: point {i + 1}"
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not NAME.match(p["name"]):
            raise LtmError(f"{where} needs a name of letters, digits and _.=+- (at most 64)")
        if set(p) - {"name", "set", "seeds"}:
            raise LtmError(f"{where} ({p['name']}): unknown key(s) {', '.join(sorted(set(p) - {'name', 'set', 'seeds'}))}")
        point_seeds = _int_list(p["seeds"], f"{where} ({p['name']}): seeds", 0) if "seeds" in p else seeds
        grid.points.append(Point(p["name"], _checked_settings(p.get("set", {}), f"{where} ({p['name']})"), point_seeds))
    if grid.lr_grid is not None:
        for where, settings in [("[base]", grid.base)] + [(f"point {p.name}", p.settings) for p in grid.points]:
            if "train.lr" in settings:
                raise LtmError(f"{source}: {where} sets train.lr, which study.lr_grid chooses; remove one of them")
    names = [p.name for p in grid.points]
    if len(set(names)) != len(names):
        raise LtmError(f"{source}: point names repeat: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    for point in grid.points:  # every config checked before anything runs
        for seed in point.seeds:
            cfg = grid.config(point, seed)
            if not descriptor(cfg.inference.method).latent:
                raise LtmError(f"{source}: point {point.name} trains without latents; AR twins are added by the study (study.twins)")
    return grid


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise LtmError(f"grid file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LtmError(f"grid file {path} is not valid TOML: {exc}") from None
    return parse_grid(raw, str(path))


def twin_configs(cfg: RunConfig, flops_matched: bool = False) -> list[tuple[str, RunConfig]]:
    """The autoregressive twins of an LTM config: ("same window", cfg without latents), and, when
    the LTM's self-attention is windowed, ("full attention", the same with full attention). Same
    shapes, batches and iterations: equal training tokens. With flops_matched, also ("equal FLOPs",
    the same-window twin trained for as many iterations as the LTM's training FLOPs buy it)."""
    twins = []
    for label, window in (("same window", cfg.model.attention_window), ("full attention", 0)):
        if label == "full attention" and cfg.model.attention_window == 0:
            break
        twin = copy.deepcopy(cfg)
        twin.inference.method = "none"
        twin.train.slow_gradient = "elbo"  # the AR twin's only training signal: its exact NLL
        twin.model.latent = False
        twin.model.attention_window = window
        twins.append((label, validate(twin, methods())))
    if flops_matched:
        twin = copy.deepcopy(twins[0][1])
        ratio = training_flops_per_token(cfg) / training_flops_per_token(twin)
        twin.train.iters = max(1, round(cfg.train.iters * ratio))
        if cfg.train.lr_decay_iters == cfg.train.iters:  # a horizon at the end stays at the end
            twin.train.lr_decay_iters = twin.train.iters
        twins.append(("equal FLOPs", validate(twin, methods())))
    return twins


def twin_key(cfg: RunConfig) -> str:
    """Twins that read the same settings are the same run: a short hash of what a `none` run reads
    (model without latent settings, train, data)."""
    settings = {f"{s}.{k}": v for s in ("model", "train", "data") for k, v in getattr(cfg, s).__dict__.items()}
    for name in NOT_READ_BY_TWIN:
        settings.pop(name, None)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"ar-{digest}-s{cfg.train.seed}"


def with_lr(cfg: RunConfig, lr: float) -> RunConfig:
    """cfg trained at learning rate `lr` (a candidate of study.lr_grid)."""
    candidate = copy.deepcopy(cfg)
    candidate.train.lr = lr
    return validate(candidate, methods())


def lr_label(lr: float) -> str:
    """A learning rate in a run's id: 0.001 -> "lr0.001"."""
    return f"lr{lr:g}"
