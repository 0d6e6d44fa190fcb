"""Named settings: `--preset paper` (the published recipe) and `--size ltm-s|ltm-m|ltm-l` (the
paper's model shapes), as dotted overrides of RunConfig.

Precedence, lowest first: preset, size, the --config TOML, flags (config.build_config). The published
values come from the authors' training code (issue 10): the fast loop is AdamW (weight decay 0.01)
on (mu, log variance) from mu 0.01 N(0,1), log variance -5 + 0.1 N(0,1), step size
lr/10 + 0.5 (1 + cos(pi s / T)) (lr - lr/10) with lr 0.34, one eps reused at every step, on the
negative ELBO summed over tokens and sequences; the decoder sees a 256-token sliding window over
1024-token sequences, its residual projections start at std 0.02 / sqrt(2 n_layer), and its slow
update is the trajectory-summed gradient (issue 20).
"""
from __future__ import annotations

from .errors import LtmError

PRESETS: dict[str, dict[str, object]] = {
    "paper": {
        "inference.method": "local",
        "inference.init": "published",
        "inference.optimizer": "adamw",
        "inference.fast_weight_decay": 0.01,
        "inference.scale_param": "log_variance",
        "inference.fast_lr_denominator": "T",
        "inference.fast_lr": 0.34,
        "inference.final_lr_ratio": 0.1,
        "inference.fixed_noise": True,
        "inference.fast_loss": "sum",  # the negative ELBO summed over tokens and sequences (model.py's training branch)
        "inference.num_samples": 1,
        "inference.steps": 16,
        "inference.eval_steps": 16,
        "model.block_size": 1024,
        "model.attention_window": 256,
        "model.cross_out_zero": False,  # the published decoder initialises every projection at random
        "model.residual_init": "scaled",  # and its residual projections at 0.02 / sqrt(2 n_layer)
        "model.latent_rope": "published",
        "train.lr": 4e-4,
        "train.beta1": 0.9,
        "train.beta2": 0.95,
        "train.weight_decay": 0.1,
        "train.grad_clip": 1.0,
        "train.slow_gradient": "trajectory",  # train_ltm.py: the fast loop's backward passes reach the decoder
        "train.warmup_iters": 1000,
        "train.min_lr_ratio": 0.1,  # not in the recipe we read: the cosine ends at lr/10 (our choice)
        "data.tokenizer": "gpt2",
    },
}

# d 512, 8 heads; latent vectors split evenly over the layers (8, 4, 8 per layer); T fast steps.
SIZES: dict[str, dict[str, object]] = {
    name: {"model.d_model": 512, "model.n_head": 8, "model.n_layer": layers, "model.n_z": n_z, "model.mlp_hidden": 0,
           "inference.steps": steps, "inference.eval_steps": steps, "data.tokenizer": "gpt2"}
    for name, layers, n_z, steps in (("ltm-s", 3, 24, 16), ("ltm-m", 6, 24, 16), ("ltm-l", 12, 96, 64))
}

# Decoder parameters with GPT-2's 50257 tokens (tied embedding; the latents are not parameters).
SIZE_PARAMETERS = {"ltm-s": 38.4e6, "ltm-m": 51.0e6, "ltm-l": 76.3e6}


def _named(table: dict, kind: str, name: str) -> dict:
    if name not in table:
        raise LtmError(f"unknown {kind} {name!r} (--{kind}): allowed values are {', '.join(table)}")
    return table[name]


def preset_settings(name: str) -> dict:
    return _named(PRESETS, "preset", name)


def size_settings(name: str) -> dict:
    return _named(SIZES, "size", name)

