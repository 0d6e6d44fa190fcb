#!/usr/bin/env bash
# The scaled-down replication of docs/replication.md: the paper preset (local), the AR baseline
# with the same 256 window and with full attention, on the same tokens; each evaluated on the first
# 32 val windows. Writes bench/replication/out/*.json (runs under bench/replication/runs/, ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=bench/replication
mkdir -p $here/out $here/runs
stamp=$(date -u +%Y%m%dT%H%M%S)
cfg=$here/paper-cpu.toml
W="--max-windows 32"
ltm fit --config $cfg --out $here/runs/paper-$stamp --json > $here/out/fit-paper.json
ltm fit --config $cfg --inference none --out $here/runs/ar-window-$stamp --json > $here/out/fit-ar-window.json
ltm fit --config $cfg --inference none --attention-window 0 --out $here/runs/ar-full-$stamp --json > $here/out/fit-ar-full.json
ltm eval $here/runs/paper-$stamp $W --fixed-noise --json > $here/out/eval-paper-fixed.json
ltm eval $here/runs/paper-$stamp $W --bound iwae --samples 16 --json > $here/out/eval-paper-iwae.json
ltm eval $here/runs/ar-window-$stamp $W --json > $here/out/eval-ar-window.json
ltm eval $here/runs/ar-full-$stamp $W --json > $here/out/eval-ar-full.json
ltm eval $here/runs/paper-$stamp $W --fixed-noise > $here/out/eval-paper.txt
