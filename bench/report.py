"""The one way a bench script reports: its result as indented JSON on stdout, and in --out."""
from __future__ import annotations

import json


def emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as fh:
            fh.write(text + "\n")


def shape_record(name: str, cfg, batch: int) -> dict:
    """The shape a torch bench measured, as its JSON states it."""
    m = cfg.model
    return {"name": name, "n_layer": m.n_layer, "n_head": m.n_head, "d_model": m.d_model, "n_z": m.n_z,
            "block_size": m.block_size, "vocab_size": m.vocab_size, "batch": batch, "fast_steps": cfg.inference.steps}
