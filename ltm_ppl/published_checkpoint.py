"""`ltm import`: a checkpoint of the authors' published code (mingluzhao/Latent-Thought-LM,
train_ltm.py: `torch.save` of {"model": state_dict, "model_args": ..., "iter_num": ..., "optimizer":
..., "config": ...}) turned into an ordinary run directory that eval, sample, diagnose and compare
read in both backends.

What changes on the way (the function does not):
- names: the published wq / wk / wv become the fused qkv (self-attention) and q + kv (cross);
  wrappers' prefixes are dropped (`_orig_mod.` of torch.compile, on the whole model or, as the
  published blocks compile their attention, inside a name; `module.` of DDP);
- rotary layout: the published code rotates interleaved pairs (2i, 2i+1) of a head, ltm-ppl rotates
  halves (i, i + head_dim/2) at the same frequency i, so each head's query and key rows are
  permuted (even rows first, then odd); q.k is unchanged, values are not rotated;
- grouped key/value heads (n_kv_heads < n_heads) are repeated per query head, as the published
  repeat_kv does;
- the tied embedding is stored once (`tok_embeddings.weight` = `output.weight`);
- the latent keys keep the published rotary positions (model.latent_rope = "published").

Loading is safe: torch.load(weights_only=True), so a file that needs code to load is refused, never
run. Every check passes before anything is written; the run is built in a hidden sibling and
renamed into place (run.stage_run / commit_run).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np

from . import durable
from .config import build_config, resolve, validate
from .data import build_tokenizer, load_corpus
from .destination import check_creatable
from .errors import LtmError
from .inference import create, methods
from .run import IMPORTED, TOKENIZER, commit_run, new_run_dir, save_checkpoint, stage_run, write_config

GPT2_TOKENS = 50257

# The published LTMConfig's fields (model.py) and how each is read. Anything else in model_args is
# an architecture ltm-ppl does not know, and refused.
INT_ARGS = ("dim", "n_layers", "n_heads", "vocab_size", "max_seq_len", "max_z_len", "window_size")
OPTIONAL_INT_ARGS = ("n_kv_heads", "hidden_dim", "multiple_of", "n_prior_layers", "n_cls_tokens")
KNOWN_ARGS = set(INT_ARGS) | set(OPTIONAL_INT_ARGS) | {"norm_eps", "dropout", "use_liger", "use_z_pos_emb", "padding"}
DEFAULTS = {"n_kv_heads": None, "hidden_dim": None, "multiple_of": 256, "norm_eps": 1e-5, "dropout": 0.0,
            "n_prior_layers": None, "n_cls_tokens": None, "window_size": 256, "use_liger": True,
            "use_z_pos_emb": True, "padding": False}  # the published LTMConfig's defaults


# ----- reading the file ------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_published(path: Path) -> dict:
    """The checkpoint dict, loaded with weights_only=True; each failure one LtmError naming it."""
    import pickle

    import torch

    if not path.exists():
        raise LtmError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise LtmError(f"checkpoint {path} is not a file")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise LtmError(f"checkpoint {path} is damaged or not a PyTorch checkpoint ({_first_line(exc)})") from None
        code = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it pickles {code.group(1)}" if code else "not only tensors and plain values"
        raise LtmError(f"checkpoint {path} needs arbitrary code to load ({what}); ltm import reads tensors and "
                       f"plain values only (torch.load weights_only=True) and refuses it") from None
    except OSError as exc:
        raise LtmError(f"cannot read checkpoint {path}: {exc.strerror or _first_line(exc)}") from None
    except Exception as exc:  # torch's zip reader (truncated), EOFError (empty), a foreign pickle stream
        raise LtmError(f"checkpoint {path} is damaged, truncated or not a PyTorch checkpoint ({_first_line(exc)})") from None
    if not isinstance(record, dict):
        raise LtmError(f"{path} holds a {type(record).__name__}, not a published LTM checkpoint (a dict with "
                       f"'model' and 'model_args')")
    for key in ("model", "model_args"):
        if key not in record:
            raise LtmError(f"{path} is not a published LTM checkpoint: it has no '{key}' "
                           f"(keys: {', '.join(map(str, list(record)[:8])) or 'none'})")
        if not isinstance(record[key], dict):
            raise LtmError(f"{path}: '{key}' is a {type(record[key]).__name__}, not a dict")
    return record


# ----- model_args -> ltm-ppl's model ----------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_model_args(raw: dict) -> dict:
    """model_args completed with the published defaults, every value checked; refuses unknown
    flags and settings ltm-ppl's decoder cannot represent, naming them."""
    unknown = sorted(str(k) for k in raw if k not in KNOWN_ARGS)
    if unknown:
        raise LtmError(f"model_args has unknown setting {unknown[0]!r}: an architecture ltm import does not know "
                       f"(known: {', '.join(sorted(KNOWN_ARGS))})")
    args = DEFAULTS | raw
    for name in INT_ARGS:
        if name not in args:
            raise LtmError(f"model_args lacks {name!r}")
        if not _is_int(args[name]) or args[name] < 1:
            raise LtmError(f"model_args {name} must be a positive integer, got {args[name]!r}")
    for name in OPTIONAL_INT_ARGS:
        if args[name] is not None and (not _is_int(args[name]) or args[name] < 0):
            raise LtmError(f"model_args {name} must be a non-negative integer or None, got {args[name]!r}")
    for name in ("use_liger", "use_z_pos_emb", "padding"):
        if not isinstance(args[name], bool):
            raise LtmError(f"model_args {name} must be true or false, got {args[name]!r}")
    for name in ("norm_eps", "dropout"):
        if not isinstance(args[name], (int, float)) or isinstance(args[name], bool) or not 0 <= args[name] < 1:
            raise LtmError(f"model_args {name} must be a number in [0, 1), got {args[name]!r}")
    d, heads, layers, n_z = args["dim"], args["n_heads"], args["n_layers"], args["max_z_len"]
    cannot = "which ltm-ppl's decoder cannot represent"
    if d % heads or (d // heads) % 2:
        raise LtmError(f"model_args dim {d} does not split into {heads} heads of even size, {cannot}")
    kv = heads if args["n_kv_heads"] is None else args["n_kv_heads"]
    if kv < 1 or heads % kv:
        raise LtmError(f"model_args n_kv_heads {kv} does not divide n_heads {heads}")
    if n_z % layers:
        raise LtmError(f"model_args max_z_len {n_z} is not a multiple of n_layers {layers} (the published "
                       f"model splits the latent vectors evenly over the layers)")
    if n_z > args["max_seq_len"]:
        raise LtmError(f"model_args max_z_len {n_z} exceeds max_seq_len {args['max_seq_len']}: the published "
                       f"latent positions (interval max_seq_len // max_z_len) would be 0 apart")
    if not args["use_z_pos_emb"]:
        raise LtmError(f"model_args use_z_pos_emb is false (latent keys without rotary positions), {cannot}")
    for name in ("n_prior_layers", "n_cls_tokens"):
        if args[name]:
            raise LtmError(f"model_args {name} is {args[name]}: a component the published decoder of model.py "
                           f"lacks and ltm-ppl does not have")
    if args["vocab_size"] < GPT2_TOKENS:
        raise LtmError(f"model_args vocab_size {args['vocab_size']} is smaller than GPT-2's {GPT2_TOKENS} tokens: "
                       f"not a model of the GPT-2 tokenizer")
    return args


def mlp_hidden(args: dict) -> int:
    """The published FeedForward / LigerSwiGLUMLP width: hidden_dim, else 2/3 of 4 dim rounded up to
    multiple_of."""
    if args["hidden_dim"]:
        return args["hidden_dim"]
    multiple = args["multiple_of"] or 1
    hidden = int(2 * (4 * args["dim"]) / 3)
    return multiple * ((hidden + multiple - 1) // multiple)


def run_config(args: dict, settings: dict, data: str | None):
    """The run's config: the paper preset (the published fast loop) with the checkpoint's shapes,
    its own num_steps / fast_lr where its training config has them, and the GPT-2 tokenizer."""
    cfg = build_config("paper", None, None, {})
    window = args["window_size"]
    model = {
        "n_layer": args["n_layers"], "n_head": args["n_heads"], "d_model": args["dim"], "n_z": args["max_z_len"],
        "block_size": args["max_seq_len"], "mlp_hidden": mlp_hidden(args), "rope_base": 10000.0,
        "norm_eps": float(args["norm_eps"]), "vocab_size": args["vocab_size"], "latent": True,
        "attention_window": window if window < args["max_seq_len"] else 0, "cross_out_zero": False,
        "latent_rope": "published",
    }
    cfg.model = dataclasses.replace(cfg.model, **model)
    if "num_steps" in settings:
        cfg.inference.steps = cfg.inference.eval_steps = settings["num_steps"]
    if "fast_lr" in settings:
        cfg.inference.fast_lr = settings["fast_lr"]
    cfg.data.data = data or "builtin:kjv"
    cfg.data.tokenizer = "gpt2"
    return resolve(cfg, cfg.model.vocab_size, cfg.model.latent)  # the checkpoint's vocabulary, with latents


def fast_settings(record: dict, args: dict) -> dict:
    """num_steps and fast_lr of the checkpoint's training config (the published zero-shot script
    reads them from there), checked; {} where the checkpoint has no config."""
    config = record.get("config")
    if not isinstance(config, dict):
        return {}
    found = {}
    if "num_steps" in config:
        if not _is_int(config["num_steps"]) or config["num_steps"] < 1:
            raise LtmError(f"the checkpoint's config num_steps must be a positive integer, got {config['num_steps']!r}")
        found["num_steps"] = config["num_steps"]
    if "fast_lr" in config:
        lr = config["fast_lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise LtmError(f"the checkpoint's config fast_lr must be a positive number, got {lr!r}")
        found["fast_lr"] = float(lr)
    if "z_dim" in config and config["z_dim"] != args["dim"]:
        raise LtmError(f"the checkpoint's config z_dim {config['z_dim']!r} differs from dim {args['dim']}: "
                       f"ltm-ppl's latent vectors have the decoder's width")
    return found


# ----- state_dict -> canonical weights ---------------------------------------------------------
def canonical_name(name: str) -> str:
    """A published parameter name without DDP's `module.` and torch.compile's `_orig_mod.` (on the
    whole model, or inside a name where a block's attention was compiled)."""
    parts = name.split(".")
    while parts and parts[0] in ("module", "_orig_mod"):
        parts.pop(0)
    return ".".join(p for p in parts if p != "_orig_mod")


def interleaved_to_halves(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows [heads * hd, d] of a query/key projection, reordered per head from interleaved rotary
    pairs (2i, 2i+1) to halves (i, i + hd/2): even rows first, then odd."""
    rows, d = w.shape
    hd = rows // heads
    return w.reshape(heads, hd // 2, 2, d).transpose(0, 2, 1, 3).reshape(rows, d)


def _repeat_heads(w: np.ndarray, kv_heads: int, heads: int) -> np.ndarray:
    """A grouped key/value projection [kv_heads * hd, d] widened to every query head (query head h
    reads kv head h // (heads / kv_heads), as the published repeat_kv)."""
    hd = w.shape[0] // kv_heads
    return np.repeat(w.reshape(kv_heads, hd, -1), heads // kv_heads, axis=0).reshape(heads * hd, -1)


def _tensors(state: dict) -> dict[str, np.ndarray]:
    import torch

    found: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise LtmError(f"the checkpoint's 'model' entry {name!r} is not a named tensor")
        key = canonical_name(name)
        if re.fullmatch(r"layers\.\d+\.(attention|cross_attention)\.mask", key):
            continue  # the causal-mask buffer of torch < 2.0 (a constant, unused with SDPA)
        if key in found:
            raise LtmError(f"the checkpoint's 'model' has tensor {key} twice (under wrapper prefixes)")
        if not value.is_floating_point():
            raise LtmError(f"tensor {name} of the checkpoint is {value.dtype}, not floating point")
        array = value.detach().float().cpu().numpy()
        if not np.isfinite(array).all():
            raise LtmError(f"tensor {name} of the checkpoint has non-finite values")
        found[key] = array
    return found


def _take(found: dict, name: str, shape: tuple, alternatives: tuple[str, ...] = ()) -> np.ndarray:
    for candidate in (name, *alternatives):
        if candidate in found:
            array = found.pop(candidate)
            if array.shape != shape:
                raise LtmError(f"tensor {candidate} of the checkpoint has shape {list(array.shape)}, its model_args "
                               f"need {list(shape)}")
            return array
    raise LtmError(f"the checkpoint's 'model' lacks tensor {name}")


def convert_state_dict(state: dict, args: dict) -> dict[str, np.ndarray]:
    """ltm-ppl's canonical weights (models.torch.decoder.Decoder's names) from a published state_dict."""
    found = _tensors(state)
    d, heads, vocab = args["dim"], args["n_heads"], args["vocab_size"]
    hd = d // heads
    kv_heads = heads if args["n_kv_heads"] is None else args["n_kv_heads"]
    hidden = mlp_hidden(args)
    out: dict[str, np.ndarray] = {}
    embedding = [found.pop(k) for k in ("tok_embeddings.weight", "output.weight") if k in found]
    if not embedding:
        raise LtmError("the checkpoint's 'model' lacks tensor tok_embeddings.weight (and output.weight)")
    for array in embedding:
        if array.shape != (vocab, d):
            raise LtmError(f"the checkpoint's embedding has shape {list(array.shape)}, its model_args need {[vocab, d]}")
    if len(embedding) == 2 and not np.array_equal(*embedding):
        raise LtmError("the checkpoint's output.weight differs from tok_embeddings.weight: an untied output layer, "
                       "which ltm-ppl's decoder (tied embedding) cannot represent")
    out["tok_emb.weight"] = embedding[0]
    for i in range(args["n_layers"]):
        p, q = f"layers.{i}.", f"layers.{i}."

        def proj(block: str, name: str, rows: int) -> np.ndarray:
            return _take(found, f"{p}{block}.{name}.weight", (rows, d))

        def qk(block: str) -> tuple[np.ndarray, np.ndarray]:
            wq = interleaved_to_halves(proj(block, "wq", d), heads)
            wk = interleaved_to_halves(proj(block, "wk", kv_heads * hd), kv_heads)
            return wq, _repeat_heads(wk, kv_heads, heads)

        wq, wk = qk("attention")
        wv = _repeat_heads(proj("attention", "wv", kv_heads * hd), kv_heads, heads)
        out[q + "attn.qkv.weight"] = np.concatenate([wq, wk, wv])
        out[q + "attn.o.weight"] = _take(found, f"{p}attention.wo.weight", (d, d))
        wq, wk = qk("cross_attention")
        wv = _repeat_heads(proj("cross_attention", "wv", kv_heads * hd), kv_heads, heads)
        out[q + "cross.q.weight"] = wq
        out[q + "cross.kv.weight"] = np.concatenate([wk, wv])
        out[q + "cross.o.weight"] = _take(found, f"{p}cross_attention.wo.weight", (d, d))
        for ours, theirs in (("attn_norm", "attention_norm"), ("cross_norm", "cross_attention_norm"), ("mlp_norm", "ffn_norm")):
            out[f"{q}{ours}.weight"] = _take(found, f"{p}{theirs}.weight", (d,))
        # LigerSwiGLUMLP (gate_proj, up_proj, down_proj) or FeedForward (w1, w3, w2): silu(gate) * up -> down
        out[q + "mlp.gate.weight"] = _take(found, f"{p}feed_forward.gate_proj.weight", (hidden, d), (f"{p}feed_forward.w1.weight",))
        out[q + "mlp.up.weight"] = _take(found, f"{p}feed_forward.up_proj.weight", (hidden, d), (f"{p}feed_forward.w3.weight",))
        out[q + "mlp.down.weight"] = _take(found, f"{p}feed_forward.down_proj.weight", (d, hidden), (f"{p}feed_forward.w2.weight",))
    out["final_norm.weight"] = _take(found, "norm.weight", (d,))
    if found:
        raise LtmError(f"the checkpoint has tensor {sorted(found)[0]}, which the published decoder of model.py "
                       f"(as ltm import reads it, {args['n_layers']} layers) lacks")
    return out


# ----- the run directory -----------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value):
    """A JSON-safe copy of a checkpoint's scalar (tensors and odd types as their text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        return float(value)  # a 0-d tensor (best_val_loss is one)
    except (TypeError, ValueError, RuntimeError):
        return str(value)


def import_checkpoint(source: str | Path, out: str | None = None, data: str | None = None) -> dict:
    """Write the run; returns a summary (run, source, shapes, settings)."""
    source = Path(source)
    run = new_run_dir(out)  # refuses an existing run or a non-empty folder
    check_creatable(run)
    if data is not None:
        load_corpus(data)  # a bad --data fails now, not at the first eval
    record = read_published(source)
    args = check_model_args(record["model_args"])
    cfg = run_config(args, fast_settings(record, args), data)
    weights = convert_state_dict(record["model"], args)
    validate(cfg, methods())
    tokenizer = build_tokenizer("gpt2")
    built = copy.deepcopy(cfg)
    built.train.device = "cpu"  # the stored config keeps "auto"; the conversion needs no accelerator
    inference = create(built)
    inference.load_weights(weights)  # the decoder's own shape check of every tensor
    provenance = {
        "source": str(source.resolve()), "sha256": _sha256(source), "iter_num": _plain(record.get("iter_num")),
        "best_val_loss": _plain(record.get("best_val_loss")), "model_args": {k: _plain(v) for k, v in record["model_args"].items()},
        "fast_settings_from_checkpoint": sorted(fast_settings(record, args)),
    }
    stage = stage_run(run)
    try:
        tokenizer.save(stage / TOKENIZER)
        write_config(stage, cfg, cfg.data.tokenizer)
        durable.write_file(stage / IMPORTED, (json.dumps(provenance, indent=2) + "\n").encode())
        tensors, scalars = inference.optimizer_state()  # a fresh slow optimiser: `fit --resume` can go on
        save_checkpoint(stage, weights, tensors, dict(scalars, backend=built.train.backend))
        commit_run(stage, run)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    m = cfg.model
    return {"run": str(run), "source": str(source), "iter_num": provenance["iter_num"],
            "params": int(sum(v.size for v in weights.values())),
            "model": {k: getattr(m, k) for k in ("n_layer", "n_head", "d_model", "n_z", "block_size", "mlp_hidden",
                                                  "vocab_size", "attention_window")},
            "steps": cfg.inference.eval_steps, "fast_lr": cfg.inference.fast_lr, "data": cfg.data.data,
            "tokenizer": cfg.data.tokenizer}
