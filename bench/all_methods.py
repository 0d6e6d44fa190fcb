"""Every method x backend at one shape, side by side in one run: tokens/s per training iteration
and training FLOPs per token. Each pair runs in its own process (the Pyro path never imports jax
and the NumPyro path never imports torch). Prints a JSON list; --out also writes it.

    python bench/all_methods.py --shape tiny
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = []
    for backend in ("pyro", "numpyro"):
        for method in ("none", "local", "amortized", "langevin"):
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                command = [sys.executable, str(HERE / "train_step.py"), "--backend", backend, "--method", method,
                           "--shape", args.shape, "--batch", str(args.batch), "--device", args.device,
                           "--repeats", str(args.repeats), "--out", out.name]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    results.append({"backend": backend, "method": method, "error": done.stderr.strip().splitlines()[-1:]})
                    continue
                r = json.loads(Path(out.name).read_text())
            results.append({k: r[k] for k in ("backend", "method", "tokens_per_s", "s_per_iteration",
                                              "training_flops_per_token", "achieved_flops", "compile_s", "device")}
                           | {"shape": r["shape"]})
            print(json.dumps(results[-1]), file=sys.stderr)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
