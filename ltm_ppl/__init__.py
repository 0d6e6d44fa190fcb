"""ltm-ppl: Latent-Thought Language Models as explicit probabilistic programs.

Everything the `ltm` commands do is here too, through the functions the CLI itself calls
(ltm_ppl/api.py):

    from ltm_ppl.api import fit, open_run, evaluate, compare, diagnose, sample, plot

`fit`, `open_run`, `compare`, `diagnose`, `sample` and `plot` are also importable from the package itself;
`ltm_ppl.evaluate` and `ltm_ppl.study` are modules (the bounds, the study grids), so those two
functions are reached as `ltm_ppl.api.evaluate` and `ltm_ppl.api.study`.

Light at import: the entry points are loaded on first use, so importing the package loads no
torch, jax, pyro, numpyro or arviz.
"""
from importlib import import_module

from .config import RunConfig, load_toml
from .errors import LtmError

__version__ = "0.1.0"

_LAZY = {
    "fit": "ltm_ppl.api",
    "open_run": "ltm_ppl.api",
    "compare": "ltm_ppl.api",
    "diagnose": "ltm_ppl.api",
    "sample": "ltm_ppl.api",
    "plot": "ltm_ppl.api",
    "import_run": "ltm_ppl.api",
    "evaluate_run": "ltm_ppl.eval_runs",
    "EvalSettings": "ltm_ppl.eval_runs",
    "compare_runs": "ltm_ppl.eval_runs",
    "diagnose_run": "ltm_ppl.diagnostics",
    "generate_text": "ltm_ppl.generate",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ltm_ppl' has no attribute {name!r}")


__all__ = ["RunConfig", "load_toml", "LtmError", "__version__", *_LAZY]
