#!/bin/bash
# C-DINO on true clusters with the given fractions of utterances moved, from the demo-recipe DINO
# models of seeds 0, 1, 2; dev trials only; two one-thread runs at a time.
#   bash oracle.sh 0.0 0.4    (10:50-10:57 UTC)
#   bash oracle.sh 0.1 0.2    (11:06-11:13 UTC)
cd /work/main
export CDINO_THREADS=1 OMP_NUM_THREADS=1 CDINO_NO_PROGRESS=1
O=/work/exp/s37/oracle; mkdir -p $O
run() { s=$1; n=$2; if [ $s = 0 ]; then D=/tmp/demoH/dino/model; else D=/work/exp/s36/claim/dino_s$s/model; fi
  .venv/bin/python bench/cdino_oracle.py --corpus /tmp/demoH/corpus --init $D --out $O/n${n}_s$s --noise $n --seed $s > $O/n${n}_s$s.json 2> $O/n${n}_s$s.err; }
jobs=(); for n in "$@"; do for s in 0 1 2; do jobs+=("$s $n"); done; done
for ((i = 0; i < ${#jobs[@]}; i += 2)); do run ${jobs[i]} & [ -n "${jobs[i+1]}" ] && run ${jobs[i+1]}; wait; done
echo finished
