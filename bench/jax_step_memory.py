"""XLA's memory plan of the compiled NumPyro `local` training step (temporary buffers, bytes),
with the likelihood's head chunked (models/jax/likelihood.py) and, for comparison, in one chunk
(the float32 [tokens x vocab] logits of the whole batch). Compiles only; runs nothing.

    python bench/jax_step_memory.py --shape small --vocab 50257
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train_step import SHAPES  # noqa: E402


def temp_bytes(shape: str, vocab: int, batch: int, chunk_elements: int) -> dict:
    from ltm_ppl.config import RunConfig
    from ltm_ppl.inference import create
    from ltm_ppl.inference import numpyro_programs
    from ltm_ppl.models.jax import likelihood as jax_chunked_ce

    jax_chunked_ce.CHUNK_ELEMENTS = chunk_elements
    numpyro_programs._PROGRAMS.clear()  # programs are cached per setting: build afresh
    cfg = RunConfig()
    n_layer, n_head, d, n_z, block, default_vocab, steps = SHAPES[shape]
    m = cfg.model
    m.n_layer, m.n_head, m.d_model, m.n_z, m.block_size = n_layer, n_head, d, n_z, block
    m.vocab_size = vocab or default_vocab
    cfg.inference.steps = steps
    cfg.train.batch_size, cfg.train.device, cfg.train.backend = batch, "cpu", "numpyro"
    inference = create(cfg)
    tokens = inference.tensor(np.zeros((batch, block + 1), np.int64))
    compiled = inference.programs.step.lower(inference.params, inference.opt_state, tokens, inference.lrs(steps),
                                             inference.next_key(), np.float32(1e-3)).compile()
    stats = compiled.memory_analysis()
    return {"chunk_tokens": jax_chunked_ce.chunk_tokens(m.vocab_size), "temp_bytes": stats.temp_size_in_bytes,
            "argument_bytes": stats.argument_size_in_bytes, "logits_f32_bytes": batch * block * m.vocab_size * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="small")
    parser.add_argument("--vocab", type=int, default=0, help="override the shape's vocabulary")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    from ltm_ppl.models.jax import likelihood as jax_chunked_ce

    chunked = temp_bytes(args.shape, args.vocab, args.batch, jax_chunked_ce.CHUNK_ELEMENTS)
    whole = temp_bytes(args.shape, args.vocab, args.batch, 2**62)
    print(json.dumps({"benchmark": "jax_step_memory", "shape": args.shape, "vocab": args.vocab or SHAPES[args.shape][5],
                      "batch": args.batch, "chunked": chunked, "one_chunk": whole}))


if __name__ == "__main__":
    main()
