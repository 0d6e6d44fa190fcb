"""Where derived data (token caches, corpus indexes, trained tokenizers) lives: LTM_CACHE_DIR, or
~/.cache/ltm-ppl (tests point LTM_CACHE_DIR at a temporary folder)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = Path(os.environ.get("LTM_CACHE_DIR") or Path.home() / ".cache" / "ltm-ppl")
    root.mkdir(parents=True, exist_ok=True)
    return root
