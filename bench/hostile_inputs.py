"""Issue 23's hostile-user reproductions, re-run: each bad request against a tiny trained run, and
how it ended (one `error:` line with exit 2 = clean; a Python traceback; a hang past the timeout).

    python bench/hostile_inputs.py --out bench/results-cpu-hostile-inputs.json

Races, disk-full and kill tests live in the test suite (tests/test_run_lock.py,
tests/test_os_failures.py, tests/test_crash_safety.py); this script covers the single commands.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = """[model]
n_layer = 2
n_head = 2
d_model = 32
n_z = 4
block_size = 32

[inference]
steps = 2
eval_steps = 2

[train]
iters = 2
batch_size = 4
eval_interval = 2
eval_windows = 4
checkpoint_interval = 2

[data]
tokenizer = "bytes"
"""


def cases(run: Path, tmp: Path) -> list[tuple[str, list[str]]]:
    r = str(run)
    return [
        ("eval --samples 1e8", ["eval", r, "--samples", "100000000"]),
        ("eval langevin --chains 1e8", ["eval", r, "--inference", "langevin", "--chains", "100000000"]),
        ("sample --num 1e8", ["sample", r, "--num", "100000000"]),
        ("fit d_model 2^20", ["fit", "--config", str(tmp / "huge.toml"), "--out", str(tmp / "huge")]),
        ("fit --batch-size 1e9", ["fit", "--config", str(tmp / "tiny.toml"), "--batch-size", "1000000000", "--out", str(tmp / "b")]),
        ("eval --plot /proc/x.png", ["eval", r, "--plot", "/proc/x.png", "--max-windows", "2"]),
        ("fit --steps 1e9", ["fit", "--config", str(tmp / "tiny.toml"), "--steps", "1000000000", "--out", str(tmp / "s")]),
        ("eval --steps 1e8", ["eval", r, "--steps", "100000000"]),
        ("sample --prompt \\xff", ["sample", r, "--prompt", "a\udcff"]),
        ("sample --temperature nan", ["sample", r, "--temperature", "nan"]),
        ("eval of a run without tokenizer.json", ["eval", str(tmp / "no-tokenizer")]),
        ("fit with a top-level `iters = 5`", ["fit", "--config", str(tmp / "flat.toml"), "--out", str(tmp / "f")]),
        ("diagnose --out onto a file", ["diagnose", r, "--out", str(tmp / "tiny.toml")]),
        ("fit --resume of a non-run", ["fit", "--resume", str(tmp)]),
        ("eval of a missing run", ["eval", str(tmp / "missing")]),
        ("compare of one run", ["compare", r]),
        ("plot --out x.jpg", ["plot", r, "--out", str(tmp / "x.jpg")]),
        ("fit --data builtin:topics?k=0", ["fit", "--data", "builtin:topics?k=0", "--out", str(tmp / "t")]),
        ("fit --data builtin:topics?alpha=-1", ["fit", "--data", "builtin:topics?alpha=-1", "--out", str(tmp / "t")]),
        ("fit --data builtin:topics?kk=3", ["fit", "--data", "builtin:topics?kk=3", "--out", str(tmp / "t")]),
        ("fit --seed -1", ["fit", "--seed", "-1", "--out", str(tmp / "n")]),
        ("fit --iters 0", ["fit", "--iters", "0", "--out", str(tmp / "n")]),
        ("eval --max-windows 0", ["eval", r, "--max-windows", "0"]),
        ("sample --max-tokens 10^9", ["sample", r, "--max-tokens", "1000000000"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        (tmp / "tiny.toml").write_text(TINY)
        (tmp / "huge.toml").write_text(TINY.replace("d_model = 32", "d_model = 1048576"))
        (tmp / "flat.toml").write_text("iters = 5\n")
        run = tmp / "run"
        subprocess.run([sys.executable, "-m", "ltm_ppl", "fit", "--config", str(tmp / "tiny.toml"), "--out", str(run),
                        "--quiet"], env=env, check=True, capture_output=True)
        subprocess.run(["cp", "-r", str(run), str(tmp / "no-tokenizer")], check=True)
        (tmp / "no-tokenizer" / "tokenizer.json").unlink()
        rows = []
        for name, argv in cases(run, tmp):
            start = time.monotonic()
            try:
                out = subprocess.run([sys.executable, "-m", "ltm_ppl", *argv], env=env, capture_output=True, text=True,
                                     timeout=args.timeout, errors="replace")
                lines = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith(("eval:", "fit:"))]
                if "Traceback" in out.stderr:
                    verdict = "traceback"
                elif out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "):
                    verdict = "clean"
                else:
                    verdict = f"exit {out.returncode}, {len(lines)} lines"
                said = lines[-1] if lines else ""
            except subprocess.TimeoutExpired:
                verdict, said = "hang", f"still running after {args.timeout:.0f} s"
            rows.append({"case": name, "verdict": verdict, "seconds": round(time.monotonic() - start, 1), "said": said[:300]})
            print(f"{verdict:>10}  {name}: {said[:140]}")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in sorted({r["verdict"] for r in rows})}
    print(json.dumps(counts))
    if args.out:
        record = {"machine": platform.machine(), "python": platform.python_version(), "device": "cpu",
                  "timeout_s": args.timeout, "counts": counts, "cases": rows}
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
