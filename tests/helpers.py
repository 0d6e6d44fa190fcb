"""Configs and a CLI runner shared by the tests (importable: tests/ is on pytest's pythonpath)."""
from __future__ import annotations

TINY_TOML = """
[model]
n_layer = 2
n_head = 2
d_model = 32
n_z = 4
block_size = 32

[inference]
steps = 2
eval_steps = 4

[train]
iters = 60
batch_size = 8
lr = 3e-3
warmup_iters = 5
eval_interval = 60
eval_windows = 16
checkpoint_interval = 20

[data]
tokenizer = "bytes"
"""

# Big enough to learn well below the unigram bound in ~15 s on 2 cores (byte tokenizer, KJV).
TRAIN_TOML = """
[model]
n_layer = 2
n_head = 4
d_model = 64
n_z = 4
block_size = 64

[inference]
steps = 2
eval_steps = 4

[train]
iters = 200
batch_size = 16
lr = 3e-3
warmup_iters = 5
eval_interval = 200
eval_windows = 16
checkpoint_interval = 100

[data]
tokenizer = "bytes"
"""


def run_cli(*args: str):
    from click.testing import CliRunner

    from ltm_ppl.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])
