"""The one way a bench script reports: its result as indented JSON on stdout, and in --out."""
from __future__ import annotations

import json


def emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as fh:
            fh.write(text + "\n")
