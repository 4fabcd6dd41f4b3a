#!/bin/bash
# The Zen 4 family study (README.md here): AMD EPYC Zen 4 (family 25 model 17), 2 cores, an idle
# machine, from a fresh clone. Seed 0 trains the teacher; seed 1 (other train and dev questions,
# other calibration draws) distils from the same teacher.
set -eu
cd "$(dirname "$0")/../../../.."
bash scripts/bootstrap
.venv/bin/p2d run squad --speedup 2
teacher=$(ls -d runs/_teachers/squad-*/model | head -1)
.venv/bin/p2d run squad --speedup 2 --seed 1 --teacher "$teacher" --out runs/squad-ziplm-2x-seed1
