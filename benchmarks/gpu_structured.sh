#!/bin/bash
# The structured study on a CUDA GPU (benchmarks/results/structured_study/): squad, default
# profile, pruned from a teacher trained on the CPU and sized by that CPU's latency table (the
# target is the CPU the model ships on; the GPU only trains it faster), then benched on torch-cuda
# (the compact model's GPU speedup). BUNDLE holds what a machine without the model and data
# packages needs: teacher/ (safetensors, any float dtype), table.json, squad_s0/ (seed 0's 5,000 /
# 1,000 sampled questions, as the packaged data gives them, gzipped). The seed-1 rows train on the
# same questions (their seed changes the batch order and the calibration draws, not the sample).
#
#   bash benchmarks/gpu_structured.sh BUNDLE ROOT RESULTS
set -u
B=$1; ROOT=$2; RES=$3
mkdir -p "$ROOT" "$RES"
mkdir -p "$ROOT/squad"
for f in train dev; do gunzip -c "$B/squad_s0/$f-v1.1.json.gz" > "$ROOT/squad/$f-v1.1.json"; done
python3 - "$B/teacher" "$ROOT/teacher" <<'PY'
import sys, shutil, pathlib, torch
from safetensors.torch import load_file, save_file
src, dst = map(pathlib.Path, sys.argv[1:])
shutil.copytree(src, dst, dirs_exist_ok=True)
st = {k: v.float() for k, v in load_file(str(src / "model.safetensors")).items()}
save_file(st, str(dst / "model.safetensors"), metadata={"format": "pt"})
PY
nvidia-smi -L
C=(--teacher "$ROOT/teacher" --model "$ROOT/teacher" --runtime torch-cuda --set "prune.latency_table=$B/table.json")
python3 benchmarks/structured_study.py --root "$ROOT" --json "$RES/study-squad.json" --parallel 10 \
  --rows "${ROWS:-ziplm-2x,gmp-2x,ziplm-2x-hidden,ziplm-2x-uniform,ziplm-1.5x,ziplm-3x,gmp-1.5x,gmp-3x,ziplm-2x-s1,gmp-2x-s1}" \
  -- "${C[@]}" --data-dir "$ROOT/squad" --threads 1
for f in "$ROOT"/squad-*.log; do echo "== $f"; tail -n 25 "$f"; done > "$RES/logs.txt"
