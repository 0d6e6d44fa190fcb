#!/usr/bin/env bash
# The project's default run (`ltm fit`, full attention) and its AR baseline, each evaluated on the
# first 64 val windows: the four numbers of docs/replication.md. Writes bench/replication/out/default-*.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=bench/replication
mkdir -p $here/out $here/runs
stamp=$(date -u +%Y%m%dT%H%M%S)
W="--max-windows 64"
ltm fit --out $here/runs/default-$stamp --json > $here/out/default-fit.json
ltm fit --inference none --out $here/runs/default-ar-$stamp --json > $here/out/default-fit-ar.json
ltm eval $here/runs/default-$stamp $W --fixed-noise --json > $here/out/default-eval-fixed.json
ltm eval $here/runs/default-$stamp $W --bound iwae --samples 16 --json > $here/out/default-eval-iwae.json
ltm eval $here/runs/default-ar-$stamp $W --json > $here/out/default-eval-ar.json
