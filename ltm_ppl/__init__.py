"""ltm-ppl: Latent-Thought Language Models as explicit probabilistic programs.

Light at import: the library's entry points load torch or jax only when called.
"""
from .config import RunConfig, load_toml
from .errors import LtmError

__version__ = "0.1.0"


def fit(*args, **kwargs):
    """Train a run; see ltm_ppl.train.fit."""
    from .train import fit as _fit

    return _fit(*args, **kwargs)


__all__ = ["RunConfig", "load_toml", "LtmError", "fit", "__version__"]
