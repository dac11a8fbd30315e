#!/bin/bash
# C-DINO variants from the demo recipe's DINO runs of seeds 0, 1, 2 (full DINO state), dev trials only.
cd /work/main
export CDINO_THREADS=1 OMP_NUM_THREADS=1 CDINO_NO_PROGRESS=1
O=${OUT:-/work/exp/s38/cd}; C=/tmp/demoH/corpus; B=.venv/bin/cdino
run() { s=$1; v=$2; shift 2
  if [ $s = 0 ]; then D=/tmp/demoH/dino; else D=/work/exp/s36/claim/dino_s$s; fi
  sets=(); for o in "$@"; do sets+=(--set "$o"); done
  $B train --recipe demo --stage cdino --data $C/train --out $O/${v}_s$s --init $D --set trainer.seed=$s "${sets[@]}" --resume > $O/${v}_s$s.log 2>&1 &&
  $B eval --model $O/${v}_s$s/model --data $C/dev --trials $C/dev/trials --json $O/${v}_s${s}_dev.json >> $O/${v}_s$s.log 2>&1; }
declare -A V=( [keep05]="cluster_aware.keep_fraction=0.5" [keep03]="cluster_aware.keep_fraction=0.3"
  [sg]="cluster_aware.cross=second_global" [sg_keep05]="cluster_aware.cross=second_global cluster_aware.keep_fraction=0.5" )
jobs=(); for v in "$@"; do for s in 0 1 2; do jobs+=("$s $v ${V[$v]}"); done; done
for ((i = 0; i < ${#jobs[@]}; i += 2)); do run ${jobs[i]} & [ -n "${jobs[i+1]}" ] && run ${jobs[i+1]}; wait; done
echo finished
