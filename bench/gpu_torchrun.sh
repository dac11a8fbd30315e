#!/usr/bin/env bash
# `cdino train` under torchrun on a lent NVIDIA machine (NCCL, bf16, ECAPA-512), DINO then
# C-DINO, on tiny synthetic data; plus the DINO step at batch 256. Wheels as in gpu_checks.sh.
set -uo pipefail
source bench/gpu_env.sh
python3 -c "import sys; sys.path.insert(0, 'tests'); from conftest import write_speaker_dir; from pathlib import Path; write_speaker_dir(Path('/tmp/gd'), 6, 8, 1.6)"
cat > /tmp/gpu_tiny.yaml <<'YAML'
encoder: {name: ecapa_tdnn}
trainer: {epochs: 2, global_batch: 16, log_every: 2, device: cuda, checkpoint_every: 2}
optim: {name: sgd, lr: 0.05, warmup_epochs: 0.5}
dino: {global_seconds: 1.0, local_seconds: 0.5}
cluster_aware: {n_clusters: 6, recluster_every: 1}
YAML
NPROC=$(nvidia-smi -L | wc -l)
timeout 150 torchrun --standalone --nproc_per_node "$NPROC" -m cdino.cli train --method dino --data /tmp/gd --out /tmp/ge/dino --config /tmp/gpu_tiny.yaml 2>&1 | tail -3 | tee "$OUT/torchrun.txt"
timeout 120 torchrun --standalone --nproc_per_node "$NPROC" -m cdino.cli train --method cdino --data /tmp/gd --out /tmp/ge/cdino --config /tmp/gpu_tiny.yaml --init /tmp/ge/dino 2>&1 | tail -3 | tee -a "$OUT/torchrun.txt"
grep -h "step\|clustering" /tmp/ge/dino/train.log /tmp/ge/cdino/train.log | tail -6 | tee -a "$OUT/torchrun.txt"
timeout 120 python3 bench/bench_dino_step.py --batch 256 --steps 10 --warmup 3 2>&1 | tee "$OUT/dino_step_b256.json"
