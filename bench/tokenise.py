"""Tokenisation throughput and peak memory of building the token cache, as JSON.

Generates a corpus of --mb MB of .jsonl shards from the built-in KJV (its chapters, shuffled anew
for every repeat) under --corpus (default /tmp; never committed), then, for each mode, in a fresh
process with an empty token cache: indexes the corpus (load_corpus), tokenises it (split_tokens),
and reads 200 random training batches lazily from the cache. Modes:

  pool   a process pool of --workers processes, the tokenizers library's own threads off
  rayon  one process, the tokenizers library's batch encoding on --workers threads
  serial one process, one thread (the baseline)

    python bench/tokenise.py --mb 200 --workers 2 --tokenizer gpt2 > bench/results-cpu-tokenise-200mb.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate(folder: Path, megabytes: int, shard_mb: int = 8) -> dict:
    """jsonl shards of KJV chapters until `megabytes` MB; reused when already there."""
    import numpy as np

    from ltm_ppl.data import load_corpus

    stamp = folder / "DONE.json"
    if stamp.exists():
        return json.loads(stamp.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    chapters = [c for split in ("train", "val", "test") for c in load_corpus("builtin:kjv").splits[split]]
    rng = np.random.default_rng(0)
    target, written, shard, docs = megabytes << 20, 0, 0, 0
    fh, in_shard = None, 0
    while written < target:
        for i in rng.permutation(len(chapters)):
            if fh is None or in_shard >= shard_mb << 20:
                if fh:
                    fh.close()
                fh, in_shard = open(folder / f"shard-{shard:05d}.jsonl", "w"), 0
                shard += 1
            line = json.dumps({"text": chapters[i]}) + "\n"
            fh.write(line)
            in_shard += len(line)
            written += len(line)
            docs += 1
            if written >= target:
                break
    fh.close()
    info = {"bytes": written, "shards": shard, "documents": docs, "source": "builtin:kjv chapters, shuffled per repeat"}
    stamp.write_text(json.dumps(info))
    return info


def one_mode(args) -> dict:
    """Runs in its own process (fresh memory high-water mark, empty cache)."""
    import numpy as np

    from ltm_ppl.data import build_tokenizer, load_corpus, split_tokens, train_batch

    workers = args.workers if args.mode == "pool" else 1
    tokenizer = build_tokenizer(args.tokenizer)
    t0 = time.perf_counter()
    corpus = load_corpus(args.corpus)
    t1 = time.perf_counter()
    train = split_tokens(corpus, "train", tokenizer, workers=workers, progress=False)
    t2 = time.perf_counter()
    from ltm_ppl.data.cache import token_cache

    _, manifest = token_cache(corpus, tokenizer)
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    t3 = time.perf_counter()
    for it in range(200):
        batch = train_batch(train, 256, 32, seed=0, iteration=it)
    t4 = time.perf_counter()
    return {
        "mode": args.mode, "workers": args.workers, "tokens": tokens,
        "index_s": round(t1 - t0, 2), "tokenise_s": round(t2 - t1, 2),
        "tokens_per_s": round(tokens / (t2 - t1)), "megabytes_per_s": round(corpus_bytes(args.corpus) / (t2 - t1) / 2**20, 2),
        "batches_200x32x257_s": round(t4 - t3, 3), "batch_shape": list(batch.shape),
        "peak_rss_main_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_largest_worker_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1) if workers > 1 else None,
        "cache_bytes": sum(p.stat().st_size for p in Path(os.environ["LTM_CACHE_DIR"]).rglob("*") if p.is_file()),
        "load_average_after": os.getloadavg(),
    }


def corpus_bytes(folder: str) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--corpus", default=None, help="folder for the generated shards (default /tmp/ltm-bench-corpus-<MB>mb)")
    parser.add_argument("--modes", default="pool,rayon,serial")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # a child: one mode
        print(json.dumps(one_mode(args)))
        return
    import numpy
    import tokenizers

    folder = Path(args.corpus or f"/tmp/ltm-bench-corpus-{args.mb}mb")
    corpus = generate(folder, args.mb)
    load_before = os.getloadavg()
    rows = []
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix="ltm-bench-cache-") as cache:
            env = dict(os.environ, LTM_CACHE_DIR=cache,
                       TOKENIZERS_PARALLELISM="true" if mode == "rayon" else "false",
                       RAYON_NUM_THREADS=str(args.workers if mode == "rayon" else 1))
            cmd = [sys.executable, __file__, "--mode", mode, "--workers", str(args.workers), "--tokenizer", args.tokenizer,
                   "--corpus", str(folder)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({
        "benchmark": "tokenise", "tokenizer": args.tokenizer, "corpus": corpus | {"folder": str(folder)},
        "cores": len(os.sched_getaffinity(0)), "cpu": platform.processor() or platform.machine(),
        "load_average_before": load_before,
        "versions": {"python": platform.python_version(), "numpy": numpy.__version__, "tokenizers": tokenizers.__version__},
        "rows": rows,
    }, indent=1))


if __name__ == "__main__":
    main()
