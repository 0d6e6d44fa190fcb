"""model.latent_rope: the latent keys' rotary positions, the published rule by default, the old
per-layer rule for runs saved before the setting (their config.json lacks it).

Published (the authors' model.py): interval = max_seq_len // max_z_len, max_z_len counting the
latent vectors of ALL layers, and every layer's m vectors take freqs_cos_z[:m], i.e. positions
0, interval, ..., (m - 1) interval.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from helpers import TINY_TOML, run_cli, twin_decoders

pytestmark = pytest.mark.usefixtures("jax_caches")

# (n_layer, n_z, block_size) -> positions of a layer's vectors, written out by hand.
PUBLISHED = {
    (2, 4, 16): [0, 4],  # interval 16 // 4 = 4, m = 2
    (3, 24, 1024): [0, 42, 84, 126, 168, 210, 252, 294],  # LTM-S: 1024 // 24 = 42, m = 8
    (6, 24, 1024): [0, 42, 84, 126],  # LTM-M: m = 4
    (2, 6, 20): [0, 3, 6],  # 20 // 6 = 3 (integer division, as the published code)
}
PER_LAYER = {
    (2, 4, 16): [0, 8],
    (3, 24, 1024): [0, 128, 256, 384, 512, 640, 768, 896],
    (6, 24, 1024): [0, 256, 512, 768],
    (2, 6, 20): [0, 20 / 3, 40 / 3],
}


@pytest.mark.parametrize("rule, table", [("published", PUBLISHED), ("per_layer", PER_LAYER)])
def test_latent_positions_by_hand_in_both_backends(rule, table):
    from ltm_ppl.config import ModelConfig
    from ltm_ppl.models.jax import decoder as jax_decoder, encoder as jax_encoder
    from ltm_ppl.models.torch.decoder import latent_positions
    from ltm_ppl.models.torch.encoder import Encoder

    for (n_layer, n_z, block), expected in table.items():
        cfg = ModelConfig(n_layer=n_layer, n_z=n_z, block_size=block, latent_rope=rule)
        np.testing.assert_allclose(latent_positions(cfg).numpy(), expected, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(jax_decoder.latent_positions(cfg)), expected, rtol=1e-6)
        # The amortized encoder's latent queries sit where the decoder reads latent vector j.
        np.testing.assert_allclose(Encoder(cfg).query_positions("cpu").numpy(), expected * n_layer, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(jax_encoder.query_positions(cfg)), expected * n_layer, rtol=1e-6)


def test_new_configs_default_to_the_published_rule_and_refuse_others():
    from ltm_ppl.config import RunConfig, validate
    from ltm_ppl.errors import LtmError

    cfg = RunConfig()
    assert cfg.model.latent_rope == "published"
    cfg.model.latent_rope = "halves"
    with pytest.raises(LtmError, match="model.latent_rope must be one of published, per_layer"):
        validate(cfg)
    cfg.model.latent_rope, cfg.model.n_z, cfg.model.block_size = "published", 8, 4
    with pytest.raises(LtmError, match="at most model.block_size"):
        validate(cfg)


@pytest.mark.parametrize("rule", ["published", "per_layer"])
def test_torch_and_jax_logits_agree_under_each_rule(rule, torch_one_thread):
    import jax.numpy as jnp
    import torch

    from ltm_ppl.models.jax import decoder as jax_decoder

    cfg, weights, decoder, params = twin_decoders(11, latent_rope=rule)
    rng = np.random.default_rng(12)
    tokens = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    z = rng.standard_normal((2, cfg.n_z, cfg.d_model)).astype(np.float32)
    with torch.no_grad():
        expected = decoder(torch.from_numpy(tokens), torch.from_numpy(z)).numpy()
    got = np.asarray(jax_decoder.decoder_logits(params, cfg, jnp.asarray(tokens), jnp.asarray(z)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # The rule changes the function (teeth): the other rule's logits differ on the same weights.
    other = dataclasses.replace(cfg, latent_rope="per_layer" if rule == "published" else "published")
    moved = np.asarray(jax_decoder.decoder_logits(params, other, jnp.asarray(tokens), jnp.asarray(z)))
    assert np.abs(moved - got).max() > 0.05


def _eval(run) -> dict:
    result = run_cli("eval", run, "--json", "--max-windows", "8", "--steps", "2", "--seed", "5")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_run_saved_without_the_setting_keeps_its_old_function(tmp_path):
    """A run trained with the old rule, its config.json then stripped of the field (as every run
    saved before it existed): the same eval number, reported as per_layer; the published rule on
    the same weights gives another number, so the loader's choice is what keeps it."""
    toml = tmp_path / "old.toml"
    toml.write_text(TINY_TOML.replace("cross_out_zero = false", 'cross_out_zero = false\nlatent_rope = "per_layer"'))
    run = tmp_path / "run"
    result = run_cli("fit", "--config", toml, "--out", run, "--iters", "4")
    assert result.exit_code == 0, result.output
    before = _eval(run)
    assert before["latent_rope"] == "per_layer"
    path = run / "config.json"
    record = json.loads(path.read_text())
    del record["config"]["model"]["latent_rope"]
    path.write_text(json.dumps(record))
    after = _eval(run)
    assert after["latent_rope"] == "per_layer"
    assert after["nll_per_token"] == before["nll_per_token"]
    record["config"]["model"]["latent_rope"] = "published"
    path.write_text(json.dumps(record))
    published = _eval(run)
    assert published["latent_rope"] == "published" and published["nll_per_token"] != before["nll_per_token"]
