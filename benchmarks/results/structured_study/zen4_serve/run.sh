#!/bin/bash
# Served latency of the Zen 4 fresh-clone structured run (dense vs the compact model behind
# `p2d serve`, MLServer, loopback, batch 1, seq 128), AMD EPYC Zen 4, 2 cores, idle machine.
.venv/bin/python benchmarks/serve_load.py RUN_DIR --runtimes onnxruntime,openvino --concurrency 1,4 --requests 200 \
  --out benchmarks/results/structured_study/zen4_serve
