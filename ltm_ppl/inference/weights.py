"""Backend-neutral rules for the canonical weights, and the messages both backends share."""
from __future__ import annotations

import numpy as np

from ..errors import LtmError

ENCODER_PREFIX = "encoder."
NO_ENCODER = ("this run has no amortized encoder (no encoder.* tensors): "
              "--inference amortized and --init amortized need one")
NO_LATENT = "no latent to infer: the run was trained with --inference none"
TOO_FEW_DRAWS = "langevin bound needs at least 2 draws (--chains x --draws)"


def checked_weights(arrays: dict[str, np.ndarray], expected: dict[str, tuple], needs_encoder: bool) -> dict[str, np.ndarray]:
    """The arrays a method needs, each refused by name when missing, misshapen or unexpected.

    An encoder the method does not use (a run trained amortized, evaluated locally) is ignored.
    """
    if needs_encoder and not any(k.startswith(ENCODER_PREFIX) for k in arrays):
        raise LtmError(NO_ENCODER)
    arrays = {k: v for k, v in arrays.items() if k in expected or not k.startswith(ENCODER_PREFIX)}
    for name, shape in expected.items():
        if name not in arrays:
            raise LtmError(f"weights.safetensors lacks tensor {name}")
        if tuple(arrays[name].shape) != tuple(shape):
            raise LtmError(
                f"tensor {name} in weights.safetensors has shape {list(arrays[name].shape)}, the config needs {list(shape)}"
            )
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise LtmError(f"weights.safetensors has tensor {extra[0]}, which the config's model lacks")
    return arrays
