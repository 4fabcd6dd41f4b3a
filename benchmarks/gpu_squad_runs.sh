#!/bin/bash
# The squad default profile on a CUDA GPU, as measured in benchmarks/results/gpu_h100/:
# GMP and oBERT at 80% and 90% for seeds 0 and 1 (seed 1 prunes from seed 0's teacher, on its
# own seeded data sample), oBERT with 16 gradients per step, GMP 2:4 at 50%; then the 2:4
# speed on sparse tensor cores (benchmarks/gpu_semi_structured.py). One run dir per row under
# ROOT; each has its report.json. Extra arguments go to every `p2d run` (e.g. --model DIR
# --data-dir DIR where the embedded model and packaged data are not installed).
#
#   bash benchmarks/gpu_squad_runs.sh runs/gpu [--model DIR --data-dir DIR]
set -u
ROOT=${1:-runs/gpu}
shift $(( $# > 0 ? 1 : 0 ))
EXTRA=("$@")
P=(python -m prune2deploy.cli run squad --runtime torch-cuda)

row() {  # row NAME ARGS...: one p2d run, timed
    local name=$1; shift
    local t0=$(date +%s)
    "${P[@]}" -o "$ROOT/$name" "$@" "${EXTRA[@]}"
    echo "$name rc=$? wall=$(( $(date +%s) - t0 ))s" | tee -a "$ROOT/summary.txt"
}

mkdir -p "$ROOT"
row gmp-0.8-s0 -s 0.8   # trains the seed-0 teacher (cached under ROOT/_teachers)
T=$(ls -d "$ROOT"/_teachers/squad-*/model | head -1)
row gmp-0.9-s0 -s 0.9
row obert-0.8-s0 -s 0.8 -m obert
row obert-0.9-s0 -s 0.9 -m obert
row obert-0.8-s0-g16 -s 0.8 -m obert --set prune.options.obert.num_grads=16
row gmp-0.5-2of4-s0 -s 0.5 --pattern 2:4
S1=(--seed 1 --teacher "$T")   # seed 1: its own data sample, seed 0's teacher
row gmp-0.8-s1 -s 0.8 "${S1[@]}"
row gmp-0.9-s1 -s 0.9 "${S1[@]}"
row obert-0.8-s1 -s 0.8 -m obert "${S1[@]}"
row obert-0.9-s1 -s 0.9 -m obert "${S1[@]}"
row obert-0.8-s1-g16 -s 0.8 -m obert --set prune.options.obert.num_grads=16 "${S1[@]}"
python benchmarks/gpu_semi_structured.py --out "$ROOT/gpu_semi_structured"
