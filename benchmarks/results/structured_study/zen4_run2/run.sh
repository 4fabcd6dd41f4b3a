#!/bin/bash
# Run 2 of docs/structured.md (AMD EPYC Zen 4, 2 cores): today's default (latency-table anchors,
# the target met at the worst shape) from run 1's cached teacher; the test suite ran beside its
# prune stage (its seconds are not costs), the bench was redone afterwards with --force.
set -eu
.venv/bin/p2d run squad --speedup 2
.venv/bin/p2d bench runs/squad-ziplm-2x --force
