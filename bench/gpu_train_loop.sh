#!/usr/bin/env bash
# The real training loop beside the bare DINO step on a lent NVIDIA machine (see BENCHMARKS.md):
# bench/bench_train_loop.py for the demo's DINO config and the VoxCeleb ECAPA-512 one, each in
# bf16 and in fp32 with TF32; one JSON file per run under $OUT (stderr beside it, .log).
# Wheels the image lacks travel in .whl/ as for gpu_checks.sh. About 6 minutes on an H200;
# the timeouts below add up to under 10.
set -uo pipefail
source bench/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
DATA=/tmp/train_loop_data  # one synthetic folder for every run: 1024 utterances of 6 s
timeout 60 python3 bench/bench_train_loop.py --device cuda --make-data "$DATA" --utts 1024 --seconds 6 || exit 1
status=0
run() {  # NAME SECONDS ARGS...
  local name=$1 limit=$2
  shift 2
  timeout "$limit" python3 bench/bench_train_loop.py --device cuda --data "$DATA" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
  local rc=$?
  echo "$name: exit $rc"
  [ "$rc" -eq 0 ] || { status=1; tail -5 "$OUT/$name.log"; return; }
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print({k: r[k] for k in ("loop_utt_s", "step_utt_s", "ratio", "precision", "batch", "data_workers")})' "$OUT/$name.json"
}
# Blocks of whole log windows (demo: log_every 20, VoxCeleb: 50); warm-up covers the workers' start.
run train_loop_demo_bf16 90 --recipe demo --precision bf16 --steps 100 --warmup 20 --rounds 3
run train_loop_demo_fp32 90 --recipe demo --precision fp32 --steps 100 --warmup 20 --rounds 3
run train_loop_vox_bf16 150 --recipe voxceleb --precision bf16 --steps 50 --warmup 8 --rounds 2
run train_loop_vox_fp32 200 --recipe voxceleb --precision fp32 --steps 50 --warmup 8 --rounds 2
exit $status
