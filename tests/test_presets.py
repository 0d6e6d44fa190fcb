"""--preset paper and --size: what they set, their precedence, the paper's parameter counts, and
the published fast loop reproduced from its own arithmetic in both backends."""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import run_cli

from ltm_ppl.config import build_config, validate
from ltm_ppl.errors import LtmError
from ltm_ppl.presets import SIZE_PARAMETERS


@pytest.mark.parametrize("size", ["ltm-s", "ltm-m", "ltm-l"])
def test_sizes_have_the_papers_parameter_counts(size):
    from ltm_ppl.models.jax.decoder import param_shapes

    cfg = build_config("paper", size, None, {})
    cfg.model.vocab_size = 50257  # GPT-2's tokenizer, which the size sets
    assert cfg.data.tokenizer == "gpt2" and (cfg.model.d_model, cfg.model.n_head) == (512, 8)
    count = sum(math.prod(shape) for shape in param_shapes(cfg.model).values())
    assert round(count / 1e6, 1) == SIZE_PARAMETERS[size] / 1e6, count
    assert cfg.model.z_per_layer * cfg.model.n_layer == cfg.model.n_z and cfg.inference.steps == cfg.inference.eval_steps == (64 if size == "ltm-l" else 16)


def test_paper_preset_sets_the_published_recipe():
    cfg = validate(build_config("paper", None, None, {"train.iters": 5000}))
    m, inf, t = cfg.model, cfg.inference, cfg.train
    assert (m.block_size, m.attention_window, m.cross_out_zero, cfg.data.tokenizer) == (1024, 256, False, "gpt2")
    assert (inf.method, inf.init, inf.optimizer, inf.fast_weight_decay, inf.scale_param, inf.fast_lr_denominator) == (
        "local", "published", "adamw", 0.01, "log_variance", "T")
    assert (inf.fast_lr, inf.final_lr_ratio, inf.fixed_noise) == (0.34, 0.1, True)
    assert (t.lr, t.beta1, t.beta2, t.weight_decay, t.grad_clip, t.warmup_iters) == (4e-4, 0.9, 0.95, 0.1, 1.0, 1000)


def test_precedence_preset_size_toml_flags_and_the_scaled_warmup(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "paper"\nsize = "ltm-m"\n[model]\nn_layer = 4\n[inference]\nsteps = 5\n')
    cfg = build_config(None, None, str(toml), {"inference.steps": 7, "train.iters": 300})
    assert cfg.model.attention_window == 256 and cfg.model.d_model == 512 and cfg.model.n_layer == 4
    assert cfg.inference.steps == 7 and cfg.inference.eval_steps == 16
    assert cfg.train.warmup_iters == 30  # the preset's 1000 shrink to iters / 10 on a shorter run
    assert build_config("paper", "ltm-l", str(toml), {}).model.d_model == 512  # flags win over the file's names
    assert build_config("paper", None, None, {"train.iters": 300, "train.warmup_iters": 500}).train.warmup_iters == 500
    assert build_config("paper", None, None, {"train.iters": 3000}).train.warmup_iters == 1000


@pytest.mark.parametrize("args, fragments", [
    (["--preset", "gpt"], ["unknown preset 'gpt' (--preset): allowed values are paper"]),
    (["--size", "ltm-xl"], ["unknown size 'ltm-xl' (--size): allowed values are ltm-s, ltm-m, ltm-l"]),
])
def test_unknown_preset_or_size_is_one_line(tmp_path, args, fragments):
    out = tmp_path / "run"
    result = run_cli("fit", "--out", out, *args)
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [f"error: {fragments[0]}"]
    assert not out.exists()


def test_reference_init_keeps_its_old_meaning():
    from ltm_ppl.config import config_from_dict

    cfg = config_from_dict({"inference": {"init": "reference"}})
    assert cfg.inference.init == "narrow" and cfg.inference.init_log_scale == -5.0
    cfg = build_config(None, None, None, {"inference.init": "reference"})
    assert validate(cfg).inference.init == "narrow"
    with pytest.raises(LtmError, match="inference.init"):
        cfg.inference.init = "zeros"
        validate(cfg)
