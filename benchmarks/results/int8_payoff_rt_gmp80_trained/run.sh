#!/bin/bash
# The trained rotten_tomatoes INT8 table (issue 14), as run: the default profile (GMP) at 80% with the
# static INT8 graphs, then every installed runtime on an idle machine.
#   bash benchmarks/results/int8_payoff_rt_gmp80_trained/run.sh RUNS_DIR
set -u
R=${1:-runs/int8_rt}
python -m prune2deploy.cli run rotten_tomatoes --sparsity 0.8 --quantize int8-static -o "$R/rotten_tomatoes-gmp-0.8"
python -m prune2deploy.cli bench "$R/rotten_tomatoes-gmp-0.8" -r auto --force
