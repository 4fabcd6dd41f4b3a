#!/bin/bash
# INT8 on the Zen 4 fresh-clone structured run (AMD EPYC Zen 4, 2 cores, idle machine): a copy of
# the run with export.quantize=int8-static and bench.accuracy_tolerance=5, then its stages again.
set -eu
R=${1:?the structured run dir}; Q=${2:-runs/squad-ziplm-2x-int8}
cp -r "$R" "$Q"
python3 - "$Q" <<'PY'
import json, sys
p = sys.argv[1] + "/recipe.json"; d = json.load(open(p))
d["export"]["quantize"] = "int8-static"; d["bench"]["accuracy_tolerance"] = 5.0
json.dump(d, open(p, "w"), indent=1)
PY
for s in export quantize bench; do .venv/bin/p2d $s "$Q" --force; done
