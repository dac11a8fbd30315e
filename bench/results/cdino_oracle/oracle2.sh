#!/bin/bash
# C-DINO with true clusters (noise 0.1 and 0.2) from the demo-recipe DINO models of seeds 0, 1, 2; dev trials only
cd /work/main
export CDINO_THREADS=1 OMP_NUM_THREADS=1 CDINO_NO_PROGRESS=1
O=/work/exp/s37/oracle; mkdir -p $O
run() { s=$1; n=$2; if [ $s = 0 ]; then D=/tmp/demoH/dino/model; else D=/work/exp/s36/claim/dino_s$s/model; fi
  .venv/bin/python bench/cdino_oracle.py --corpus /tmp/demoH/corpus --init $D --out $O/n${n}_s$s --noise $n --seed $s > $O/n${n}_s$s.json 2> $O/n${n}_s$s.err; }
run 0 0.2 & run 1 0.2; wait
run 2 0.2 & run 0 0.1; wait
run 1 0.1 & run 2 0.1; wait
echo finished
