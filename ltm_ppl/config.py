"""Settings as dataclasses: TOML in (`--config`), flag overrides, JSON in the run directory.

Every value is type-checked and range-checked by `validate`, and each message names the field,
so a bad config is refused before anything is written.
"""
from __future__ import annotations

import copy
import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .checks import MAX_SEED, MAX_STEPS, require_non_negative, require_positive
from .errors import LtmError
# Methods as data: [inference]'s fields are the registered methods' options. The registry and the
# method descriptors import no config (and neither torch nor jax), so this is no circle.
from .inference.registry import backends, options
from .presets import preset_settings, size_settings

FORMAT_VERSION = 2  # 2: checkpoints/<iter>/ folders, train.lr_decay_iters stored resolved
READABLE_FORMATS = (1, 2)
DEVICES = ("auto", "cpu", "cuda")
# Rotary positions of the latent keys (models/torch/decoder.latent_positions): "published" spaces
# ALL n_z vectors over the block and gives every layer the first m of those positions (the
# authors' model.py); "per_layer" spaces each layer's m vectors over the block (runs saved before
# the setting existed were trained with it, and load with it: run/migrate.py).
LATENT_ROPE = ("published", "per_layer")
# Initial std of the residual projections (every attention output projection, self and cross, and
# the MLP's up projection): "flat" 0.02 like every matrix; "scaled" 0.02 / sqrt(2 n_layer), the
# authors' model.py (GPT-2's scaled init, applied by name to wo and w3).
RESIDUAL_INIT = ("flat", "scaled")
# What the slow step's decoder gradient is (`local` only; docs/design.md): "elbo" the ELBO at the
# fitted q with fresh noise, decoder frozen in the fast steps; "trajectory" the authors' update: the
# decoder gradients of the fast loop's loss at every fast iterate (one eps for the whole loop)
# summed, plus the cross-entropy's at the final z = mu + sigma eps with that eps.
SLOW_GRADIENTS = ("elbo", "trajectory")


@dataclass
class ModelConfig:
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    n_z: int = 8  # latent vectors per sequence, split evenly over the layers; d_z = d_model
    block_size: int = 256  # predicted tokens per window = decoder context
    mlp_hidden: int = 0  # SwiGLU width; 0 picks 8/3 d_model rounded up to a multiple of 32
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    vocab_size: int = 0  # set from the tokenizer when a run starts
    latent: bool = True  # False: the decoder without cross-attention (the `none` baseline)
    encoder_layers: int = 2  # bidirectional layers of the amortized encoder q_phi(z | x)
    attention_window: int = 0  # causal self-attention sees the W keys ending at the token itself; 0: all
    cross_out_zero: bool = True  # cross-attention output projections start at 0: the LTM starts as its AR twin (docs/results.md)
    latent_rope: str = "published"  # latent keys' rotary positions, one of LATENT_ROPE
    residual_init: str = "flat"  # initial std of the residual projections, one of RESIDUAL_INIT

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        return -(-int(8 * self.d_model / 3) // 32) * 32

    @property
    def z_per_layer(self) -> int:
        return self.n_z // self.n_layer


def _init_log_scale(self) -> float:
    """local's starting log sigma: -5 for init "narrow" (older name "reference"), else 0 ("published"
    draws its start, "amortized" starts at the encoder's q)."""
    return -5.0 if self.init in ("narrow", "reference") else 0.0


def _inference_config_class():
    """[inference]: the settings every method reads, then each registered method's options (their
    fields, types and defaults come from the method descriptors: an option is declared once)."""
    common = [
        ("method", str, field(default="local")),
        ("steps", int, field(default=4)),  # inner steps per training iteration: fast steps (local), Langevin steps
        ("eval_steps", int, field(default=16)),  # inner steps when a bound is reported
        ("num_samples", int, field(default=1)),  # noise samples per ELBO estimate in training
    ]
    own = [(o.field, o.type, field(default=o.default)) for o in options()]
    return dataclasses.make_dataclass("InferenceConfig", common + own, namespace={
        "init_log_scale": property(_init_log_scale), "__module__": __name__})


InferenceConfig = _inference_config_class()


@dataclass
class TrainConfig:
    iters: int = 300
    batch_size: int = 8
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_iters: int = 20
    lr_decay_iters: int = 0  # horizon of the cosine; 0 means `iters`
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_windows: int = 32  # val windows bounded at each periodic evaluation
    checkpoint_interval: int = 100
    log_interval: int = 10  # metrics reach the host (and metrics.jsonl) every N iterations: no per-iteration sync
    seed: int = 0
    device: str = "auto"
    backend: str = "pyro"
    compile: bool = False
    slow_gradient: str = "elbo"  # the decoder's training signal (local), one of SLOW_GRADIENTS


@dataclass
class DataConfig:
    data: str = "builtin:kjv"
    tokenizer: str = "bpe:1024"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "inference": InferenceConfig, "train": TrainConfig, "data": DataConfig}


def _check_type(name: str, value, annotation):
    hint = annotation
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hints = typing.get_args(hint)
    else:
        hints = (hint,)
    for h in hints:
        if h is type(None) and value is None:
            return value
        if h is bool and isinstance(value, bool):
            return value
        if h is int and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:  # numpy, torch and jax take 64-bit integers at most
                raise LtmError(f"config: {name} is out of range, got {value}")
            return value
        if h is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond the largest float
                raise LtmError(f"config: {name} is out of range, got {value}") from None
        if h is str and isinstance(value, str):
            return value
    expected = " or ".join(getattr(h, "__name__", str(h)) for h in hints)
    raise LtmError(f"config: {name} must be {expected}, got {value!r}")


def _section_from_dict(cls, values: dict, section: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise LtmError(f"config: unknown setting {section}.{key}")
        kwargs[key] = _check_type(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


NAMED = ("preset", "size")  # top-level TOML keys naming settings of ltm_ppl.presets


def _sections(raw: dict) -> dict:
    """{section: dataclass instance} of the sections present in raw (checked, named in errors)."""
    sections = {}
    for key, value in raw.items():
        if key not in SECTIONS:
            if not isinstance(value, dict):  # `iters = 5` above every [section]
                homes = [name for name, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
                where = f"; it belongs in [{homes[0]}]" if homes else ""
                raise LtmError(f"config: unknown top-level key {key!r} (top-level keys: {', '.join(NAMED)}; settings go "
                               f"in a section: {', '.join(f'[{n}]' for n in SECTIONS)}){where}")
            raise LtmError(f"config: unknown section [{key}] (known: {', '.join(SECTIONS)}; top-level keys: {', '.join(NAMED)})")
        if not isinstance(value, dict):
            raise LtmError(f"config: [{key}] must be a table")
        sections[key] = _section_from_dict(SECTIONS[key], value, key)
    return sections


def config_from_dict(raw: dict) -> RunConfig:
    cfg = RunConfig(**_sections(raw))
    apply_aliases(cfg.inference)
    return cfg


def apply_aliases(inf) -> None:
    """Older names of option values (an Option's aliases) replaced by their current names, so runs
    and commands written before a rename keep their meaning."""
    for option in options():
        value = getattr(inf, option.field)
        renamed = dict(option.aliases).get(value) if isinstance(value, str) else None
        if renamed is not None:
            setattr(inf, option.field, renamed)


def _parse_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise LtmError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LtmError(f"config file {path} is not valid TOML: {exc}") from None


def load_toml(path: str | Path) -> RunConfig:
    """The file's settings over the defaults (and over its named preset and size, if any)."""
    return build_config(None, None, path, {})


def read_toml(path: str | Path) -> tuple[dict[str, object], dict[str, str]]:
    """({"section.field": value} of the settings the file sets, {"preset"/"size": name}), so the
    file can be layered over a preset (build_config)."""
    raw = _parse_toml(path)
    names = {}
    for key in NAMED:
        if key in raw:
            if not isinstance(raw[key], str):
                raise LtmError(f"config: {key} must be a name (str), got {raw[key]!r}")
            names[key] = raw.pop(key)
    _sections(raw)  # type and name checks
    settings = {f"{section}.{name}": value for section, table in raw.items() for name, value in table.items()}
    return settings, names


def apply_overrides(cfg: RunConfig, overrides: dict[str, object]) -> RunConfig:
    """Set "section.field" keys, skipping None (a flag the user did not give)."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, name = dotted.split(".")
        target = getattr(cfg, section)
        hint = typing.get_type_hints(type(target))[name]
        setattr(target, name, _check_type(dotted, value, hint))
    return cfg


# The command-line flag of a setting, named in its error message too (methods' flags: their descriptors).
FLAGS = {
    "inference.steps": "--steps", "inference.method": "--inference", "model.attention_window": "--attention-window",
    "train.iters": "--iters", "train.lr_decay_iters": "--lr-decay-iters", "train.batch_size": "--batch-size", "train.seed": "--seed", "train.device": "--device",
    "train.log_interval": "--log-interval",
}


def _flag(name: str) -> str:
    flags = FLAGS | {f"inference.{o.field}": o.flag for o in options() if o.flag}
    return f" ({flags[name]})" if name in flags else ""


def _positive(name: str, value) -> None:
    require_positive(f"config: {name}{_flag(name)}", value, integer=False)  # NaN and inf fail too


def _non_negative(name: str, value) -> None:
    require_non_negative(f"config: {name}{_flag(name)}", value)


def _one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise LtmError(f"config: {name}{_flag(name)} must be one of {', '.join(choices)}, got {value!r}")


def _open_unit(name: str, value) -> None:
    if not 0 < value < 1:
        raise LtmError(f"config: {name}{_flag(name)} must be in (0, 1), got {value}")


CHECKS = {"positive": _positive, "non_negative": _non_negative, "open_unit": _open_unit}


def resolve(cfg: RunConfig, vocab_size: int, latent: bool) -> RunConfig:
    """A run's config completed once, before it is written or trained: model.vocab_size (the
    tokenizer's for a new run, the stored one on resume), model.latent (whether the method reads
    latents) and train.lr_decay_iters (0 means "the --iters of this fit"; stored resolved, so that
    a resumed run follows the schedule it was started with). A copy: cfg stays as it was."""
    resolved = copy.deepcopy(cfg)
    resolved.model.vocab_size = vocab_size
    resolved.model.latent = latent
    if resolved.train.lr_decay_iters == 0:
        resolved.train.lr_decay_iters = resolved.train.iters
    return resolved


def validate(cfg: RunConfig, methods: tuple[str, ...] = ()) -> RunConfig:
    m, inf, t = cfg.model, cfg.inference, cfg.train
    for name in ("n_layer", "n_head", "d_model", "block_size"):
        _positive(f"model.{name}", getattr(m, name))
    _non_negative("model.mlp_hidden", m.mlp_hidden)
    _non_negative("model.encoder_layers", m.encoder_layers)
    _non_negative("model.vocab_size", m.vocab_size)  # 0 until the tokenizer sets it
    _positive("model.rope_base", m.rope_base)
    _positive("model.norm_eps", m.norm_eps)
    if m.d_model % m.n_head or (m.d_model // m.n_head) % 2:
        raise LtmError(
            f"config: model.d_model ({m.d_model}) must split into model.n_head ({m.n_head}) heads of even size"
        )
    if not 0 <= m.attention_window <= m.block_size:
        raise LtmError(
            f"config: model.attention_window{_flag('model.attention_window')} must be 0 (full attention) or "
            f"1..model.block_size ({m.block_size}) keys, got {m.attention_window}"
        )
    _one_of("model.latent_rope", m.latent_rope, LATENT_ROPE)
    _one_of("model.residual_init", m.residual_init, RESIDUAL_INIT)
    if m.latent:
        _positive("model.n_z", m.n_z)
        if m.n_z % m.n_layer:
            raise LtmError(f"config: model.n_z ({m.n_z}) must be divisible by model.n_layer ({m.n_layer})")
        if m.latent_rope == "published" and m.n_z > m.block_size:  # the spacing block_size // n_z would be 0
            raise LtmError(f"config: model.n_z ({m.n_z}) must be at most model.block_size ({m.block_size}) with "
                           f"model.latent_rope = \"published\"")
    if methods:
        _one_of("inference.method", inf.method, methods)
    for name in ("steps", "eval_steps", "num_samples"):
        _positive(f"inference.{name}", getattr(inf, name))
    for name in ("steps", "eval_steps"):
        if getattr(inf, name) > MAX_STEPS:
            raise LtmError(f"config: inference.{name}{_flag('inference.' + name)} must be at most {MAX_STEPS}, "
                           f"got {getattr(inf, name)}")
    apply_aliases(inf)  # e.g. `--init reference` keeps its old meaning ("narrow")
    for option in options():  # every method's options, whichever method runs (a run may switch method)
        name = f"inference.{option.field}"
        if option.check:
            CHECKS[option.check](name, getattr(inf, option.field))
        if option.choices:
            _one_of(name, getattr(inf, option.field), option.choices)
        if option.bounds and not option.bounds[0] <= getattr(inf, option.field) <= option.bounds[1]:
            raise LtmError(f"config: {name}{_flag(name)} must be in {option.bounds[0]}..{option.bounds[1]}, "
                           f"got {getattr(inf, option.field)!r}")
    for name in ("iters", "batch_size", "lr", "eval_interval", "eval_windows", "checkpoint_interval", "log_interval"):
        _positive(f"train.{name}", getattr(t, name))
    for name in ("warmup_iters", "lr_decay_iters", "weight_decay", "grad_clip", "seed"):
        _non_negative(f"train.{name}", getattr(t, name))
    if t.seed > MAX_SEED:
        raise LtmError(f"config: train.seed{_flag('train.seed')} must be at most {MAX_SEED}, got {t.seed}")
    if not 0 < t.min_lr_ratio <= 1:
        raise LtmError(f"config: train.min_lr_ratio must be in (0, 1], got {t.min_lr_ratio}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(t, name) < 1:
            raise LtmError(f"config: train.{name} must be in [0, 1), got {getattr(t, name)}")
    _one_of("train.device", t.device, DEVICES)
    _one_of("train.slow_gradient", t.slow_gradient, SLOW_GRADIENTS)
    _one_of("train.backend", t.backend, backends())
    return cfg


def build_config(preset: str | None, size: str | None, config_file: str | None, overrides: dict):
    """RunConfig from defaults < preset < size < TOML < flags. The TOML may name `preset` and
    `size` at its top level; the flags --preset / --size win over those names.

    The preset's 1000 warm-up iterations shrink to a tenth of train.iters when the run is shorter
    than them (and nothing but the preset set the warm-up), so a short run still decays."""
    sections, names = read_toml(config_file) if config_file else ({}, {})
    preset = preset if preset is not None else names.get("preset")
    size = size if size is not None else names.get("size")
    cfg = RunConfig()
    if preset is not None:
        apply_overrides(cfg, preset_settings(preset))
    if size is not None:
        apply_overrides(cfg, size_settings(size))
    apply_overrides(cfg, sections)
    apply_overrides(cfg, overrides)
    warmup_from_preset = preset is not None and "train.warmup_iters" not in sections and overrides.get("train.warmup_iters") is None
    if warmup_from_preset and cfg.train.warmup_iters >= cfg.train.iters:
        cfg.train.warmup_iters = max(1, cfg.train.iters // 10)
    return cfg
