#!/usr/bin/env bash
# All GPU checks in one go, for a lent NVIDIA machine (see BENCHMARKS.md):
#   wheels the image lacks (soundfile, soxr, cffi, pycparser, faiss-cpu) travel in .whl/
set -uo pipefail
source bench/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 150 python3 bench/bench_dino_step.py 2>&1 | tee "$OUT/dino_step.json"
timeout 150 python3 bench/gpu_smoke.py 2>&1 | tee "$OUT/gpu_smoke.json"
