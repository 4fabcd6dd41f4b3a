#!/bin/bash
# The fresh-clone structured run of docs/structured.md (AMD EPYC Zen 4, 2 cores): the README's
# set-up, then the structured target on the embedded default; report.json, bench.md, table.json,
# train_log.json and the console log beside this file come from it.
set -eu
git clone "${1:-.}" p2d-fresh && cd p2d-fresh
bash scripts/bootstrap
time .venv/bin/p2d run squad --speedup 2
