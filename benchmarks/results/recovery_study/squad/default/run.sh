#!/bin/bash
# The full-length confirmations of 2026-11-24 (second study), as run: a fresh clone of main,
# the default profile (KD temperature 1), GMP at 80%; then oBERT with the training steps'
# gradients (prune.options.obert.gradients=training) from that run's teacher.
#   bash benchmarks/results/recovery_study/squad/default/run.sh RUNS_DIR
set -u
R=${1:-runs/confirm}
python -m prune2deploy.cli run squad --sparsity 0.8 -o "$R/squad-gmp-0.8"
T=$(ls -d "$R"/_teachers/squad-*/model | head -1)
python -m prune2deploy.cli run squad --sparsity 0.8 -m obert --set prune.options.obert.gradients=training \
    --teacher "$T" -o "$R/squad-obert_train-0.8"
# seed 1 of the default (third study, 2026-11-24; its own teacher and questions):
#   python -m prune2deploy.cli run squad --sparsity 0.8 --seed 1 -o "$R/squad-gmp-0.8-s1"
# fourth study (2026-11-24 evening): a pruning step every 0.05 epoch (31 steps) instead of 0.1, seeds 0 and 1
# from their teachers (neutral: 93.1 / 95.3% against 93.2 / 94.8%):
#   python -m prune2deploy.cli run squad --sparsity 0.8 --seed S --set prune.prune_freq=0.05 -o "$R/squad-gmp-0.8-f05-sS"
# issue 14, block-4's accuracy cost (GMP, seed 0, the default's teacher): 50.41 F1 (80.2%) vs unstructured's 58.62:
#   python -m prune2deploy.cli run squad --sparsity 0.8 --pattern block4 -o "$R/squad-gmp-0.8-block4"
# fifth study (2026-11-25; from the cached teachers, 1 thread each beside other jobs): KD hardness 0.5 at temperature 1
# (seed 0: 93.3%, neutral), temperature 2 on seed 1, and the default at 90% on both seeds (86.6 / 88.9%):
#   python -m prune2deploy.cli run squad --sparsity 0.8 --set prune.kd_hardness=0.5 -o "$R/squad-gmp-0.8-h05-s0"
#   python -m prune2deploy.cli run squad --sparsity 0.8 --seed 1 --set prune.kd_temperature=2.0 -o "$R/squad-gmp-0.8-t2-s1"
#   python -m prune2deploy.cli run squad --sparsity 0.9 --seed S -o "$R/squad-gmp-0.9-t1-sS"
# (the same rows through the study script: benchmarks/recovery_study.py squad --mode default
#  --rows gradual_lr4x_b8_t1_h05 | gradual_lr4x_b8_t1 [--sparsity 0.9] --seeds 0,1)
