"""examples/ run as a user runs them, at a tiny size: each fits its LTM by SVI and learns."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script", ["pyro_ltm.py", pytest.param("numpyro_ltm.py", marks=pytest.mark.slow)])  # jit: ~25 s idle
def test_example_fits_the_ltm_by_svi(script):
    out = subprocess.run([sys.executable, str(EXAMPLES / script), "-n", "30", "--log-every", "10", "--length", "16",
                          "--d-model", "16", "--heads", "2", "--n-z", "2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    losses = [float(x) for x in re.findall(r"-ELBO (\S+) nats/token", out.stdout)]  # steps 0, 10, 20, 29
    final = float(re.search(r"final -ELBO of all \d+ sequences: (\S+) nats/token", out.stdout).group(1))
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses + [final]), out.stdout
    # starts near a uniform byte model (small initial logits, q = prior), then learns the corpus
    assert abs(losses[0] - math.log(256)) < 0.2, out.stdout
    assert losses[-1] < losses[0] - 0.5 and final < losses[0] - 0.5, out.stdout
