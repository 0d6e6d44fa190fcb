"""ltm-ppl: Latent-Thought Language Models as explicit probabilistic programs.

Everything the `ltm` commands do is here too:

    from ltm_ppl import RunConfig, fit, open_run, evaluate_run, diagnose_run, compare_runs, generate_text

Light at import: the entry points are loaded on first use, so importing the package loads no
torch, jax, pyro, numpyro or arviz.
"""
from importlib import import_module

from .config import RunConfig, load_toml
from .errors import LtmError

__version__ = "0.1.0"

_LAZY = {
    "fit": "ltm_ppl.train",
    "open_run": "ltm_ppl.runs",
    "evaluate_run": "ltm_ppl.runs",
    "compare_runs": "ltm_ppl.runs",
    "diagnose_run": "ltm_ppl.diagnostics",
    "generate_text": "ltm_ppl.generate",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ltm_ppl' has no attribute {name!r}")


__all__ = ["RunConfig", "load_toml", "LtmError", "__version__", *_LAZY]
