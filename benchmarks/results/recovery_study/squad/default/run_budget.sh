#!/bin/bash
# The 30-minute budget on 2 Zen 3 cores (third study, 2026-11-24), as run: each on a fresh
# clone of main with the teacher trained, timed whole.
#   n4000: 4,000 train questions instead of 5,000 (teacher and prune both 20% shorter)
#   e1.5:  5,000 questions, the prune stage at 1.5 epochs instead of 2, its schedule scaled
#          with it (target at 1.125 ep, a step every 0.075 ep: the same 16 steps, 1/4 recovery)
#   bash benchmarks/results/recovery_study/squad/default/run_budget.sh RUNS_DIR
set -u
R=${1:-runs/budget}
python -m prune2deploy.cli run squad --sparsity 0.8 --set data.train_examples=4000 -o "$R/n4000/squad-gmp-0.8-n4000"
python -m prune2deploy.cli run squad --sparsity 0.8 --set prune.epochs=1.5 --set prune.prune_end=1.125 \
    --set prune.prune_freq=0.075 -o "$R/e1.5/squad-gmp-0.8-e1.5"
