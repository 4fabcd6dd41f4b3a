#!/usr/bin/env bash
# BBC News as a user's own CSV (string labels), at the default profile: 80% unstructured and
# --speedup 2 structured, then packaged, verified and served. Results: examples/own_data/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-/tmp/bbc-csv}
RUNS=${RUNS:-runs/own_data}
.venv/bin/python examples/own_data/make_bbc_csv.py "$DATA"
time .venv/bin/p2d run text-classification --data-dir "$DATA" --sparsity 0.8 --out "$RUNS/bbc-gmp-0.8"
time .venv/bin/p2d run text-classification --data-dir "$DATA" --speedup 2 --out "$RUNS/bbc-ziplm-2x"
rm -rf "$RUNS/bbc-2x-art"
.venv/bin/p2d package "$RUNS/bbc-ziplm-2x" --out "$RUNS/bbc-2x-art"
.venv/bin/p2d verify "$RUNS/bbc-2x-art"
.venv/bin/p2d serve-check "$RUNS/bbc-2x-art"
mkdir -p examples/own_data/results
cp "$RUNS/bbc-gmp-0.8/report.json" examples/own_data/results/report-gmp-0.8.json
cp "$RUNS/bbc-ziplm-2x/report.json" examples/own_data/results/report-ziplm-2x.json
