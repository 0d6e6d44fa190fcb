import pytest

from ltm_ppl.config import RunConfig, apply_overrides, config_from_dict, load_toml, validate
from ltm_ppl.errors import LtmError


def test_toml_sections_and_flag_overrides(tiny_toml):
    cfg = load_toml(tiny_toml)
    assert (cfg.model.d_model, cfg.inference.steps, cfg.data.tokenizer) == (32, 2, "bytes")
    apply_overrides(cfg, {"inference.steps": 7, "train.seed": None})
    assert cfg.inference.steps == 7 and cfg.train.seed == 0
    validate(cfg, ("local",))


def test_int_is_accepted_where_float_is_expected():
    cfg = config_from_dict({"train": {"lr": 1}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"model": {"n_layer": "four"}}, "model.n_layer"),
        ({"train": {"compile": 1}}, "train.compile"),
        ({"model": {"bogus": 1}}, "model.bogus"),
        ({"nonsense": {}}, "[nonsense]"),
    ],
)
def test_wrong_type_or_unknown_key_names_the_field(raw, field):
    with pytest.raises(LtmError, match=field.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(raw)


@pytest.mark.parametrize(
    "section, name, value, message",
    [
        ("inference", "steps", -1, r"inference.steps \(--steps\) must be positive"),
        ("model", "n_z", 7, r"model.n_z \(7\) must be divisible by model.n_layer \(2\)"),
        ("model", "n_head", 3, "model.d_model"),
        ("train", "beta2", 1.5, "train.beta2"),
        ("train", "device", "tpu", r"train.device \(--device\) must be one of"),
        ("inference", "init", "zeros", r"inference.init \(--init\) must be one of"),
    ],
)
def test_out_of_range_values_are_refused(section, name, value, message):
    cfg = RunConfig()
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(LtmError, match=message):
        validate(cfg, ("amortized", "langevin", "local", "none"))


def test_unknown_method_is_refused():
    cfg = RunConfig()
    cfg.inference.method = "magic"
    with pytest.raises(LtmError, match=r"inference.method \(--inference\) must be one of amortized, langevin, local, none, got .magic."):
        validate(cfg, ("amortized", "langevin", "local", "none"))


def test_default_mlp_width_is_swiglu_sized():
    cfg = RunConfig().model
    assert cfg.hidden % 32 == 0 and 8 * cfg.d_model / 3 <= cfg.hidden < 8 * cfg.d_model / 3 + 32


def test_training_flops_count_the_sliding_window():
    from ltm_ppl.flops import decoder_forward, keys_per_query

    cfg = RunConfig().model
    cfg.vocab_size, cfg.block_size = 256, 1024
    full = decoder_forward(cfg)
    cfg.attention_window = 256
    windowed = decoder_forward(cfg)
    # Each layer's attention (scores + weighted values, 4 d FLOPs per key) shrinks from L/2 keys
    # per query to W (1 - W / 2L): 512 -> 224 keys.
    assert keys_per_query(1024, 256, True) == 224 and keys_per_query(1024, 1024, True) == keys_per_query(1024, 0, True) == 512
    assert full - windowed == pytest.approx(cfg.n_layer * 4 * cfg.d_model * (512 - 224))


def test_defaults_are_the_documented_recipe():
    """README and docs/results.md describe `ltm fit`'s default as issue 14's recipe: changing a
    default without re-measuring those figures should fail here first."""
    cfg = RunConfig()
    m, t, inf = cfg.model, cfg.train, cfg.inference
    assert (m.n_layer, m.n_head, m.d_model, m.n_z, m.block_size, m.attention_window, m.cross_out_zero) == (2, 4, 64, 8, 256, 0, True)
    assert (t.iters, t.batch_size, t.lr, t.warmup_iters, t.eval_windows) == (300, 8, 3e-3, 20, 32)
    assert (inf.method, inf.steps, inf.eval_steps, inf.init, inf.fast_lr, inf.optimizer) == ("local", 4, 16, "prior", 0.34, "adam")


def test_a_setting_above_every_section_is_named_with_its_section(tmp_path):
    path = tmp_path / "flat.toml"
    path.write_text("iters = 5\n")
    with pytest.raises(LtmError, match=r"unknown top-level key 'iters' .*; it belongs in \[train\]$"):
        load_toml(path)
    path.write_text("[model]\nn_layer = 2\n[inference]\nsteps = 10001\n")
    with pytest.raises(LtmError, match=r"inference.steps \(--steps\) must be at most 10000, got 10001"):
        validate(load_toml(path))


def test_resolve_completes_a_copy_once():
    from ltm_ppl.config import resolve

    cfg = RunConfig()
    cfg.train.iters = 7
    resolved = resolve(cfg, 257, False)
    assert (resolved.model.vocab_size, resolved.model.latent, resolved.train.lr_decay_iters) == (257, False, 7)
    assert (cfg.model.vocab_size, cfg.model.latent, cfg.train.lr_decay_iters) == (0, True, 0)  # left as given
    cfg.train.lr_decay_iters = 5  # a horizon given is kept
    assert resolve(cfg, 257, True).train.lr_decay_iters == 5
