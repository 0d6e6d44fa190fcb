"""Text from a trained run: latents from the prior, or from the posterior given a prompt."""
from __future__ import annotations

import numpy as np


def generate_text(inference, tokenizer, prompt: str | None, num: int, max_tokens: int,
                  temperature: float, top_k: int, steps: int, seed: int) -> list[str]:
    """`num` continuations. With a prompt, z ~ q(z | BOS + prompt) fitted by `steps` fast steps
    (the same local inference as training); without one, z ~ N(0, I)."""
    ids = [tokenizer.eot_id] + (tokenizer.encode(prompt) if prompt else [])
    context = np.tile(np.asarray(ids, dtype=np.int64)[-(inference.cfg.model.block_size + 1):], (num, 1))
    with inference.rng_scope(seed):
        if prompt and inference.cfg.model.latent and context.shape[1] > 1:
            z = inference.posterior_latents(context, steps)
        else:
            z = inference.prior_latents(num)
        new = inference.generate(context, z, max_tokens, temperature, top_k)
    texts = []
    for row in new:
        row = list(row)
        if tokenizer.eot_id in row:  # a document ended: stop there
            row = row[: row.index(tokenizer.eot_id)]
        texts.append((prompt or "") + tokenizer.decode(row))
    return texts
