import json

import numpy as np
from safetensors.numpy import load_file

from ltm_ppl.config import load_toml
from ltm_ppl.train import fit


def metrics_without_timing(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]


def test_n_iterations_equal_half_then_resume_then_half(tiny_toml, tmp_path):
    def config(iters):
        cfg = load_toml(tiny_toml)
        cfg.train.iters, cfg.train.lr_decay_iters = iters, 8
        cfg.train.checkpoint_interval, cfg.train.eval_interval, cfg.train.eval_windows = 2, 4, 8
        return cfg

    fit(config(8), out=str(tmp_path / "whole"), progress=False, echo=lambda s: None)
    fit(config(4), out=str(tmp_path / "halves"), progress=False, echo=lambda s: None)
    fit(config(8), resume=str(tmp_path / "halves"), progress=False, echo=lambda s: None)

    a, b = (load_file(str(tmp_path / name / "weights.safetensors")) for name in ("whole", "halves"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert metrics_without_timing(tmp_path / "whole") == metrics_without_timing(tmp_path / "halves")
    assert json.loads((tmp_path / "halves" / "trainer_state.json").read_text())["iteration"] == 8
