#!/bin/bash
# Every stage-1 arm model of the tuning runs, on the 40-speaker dev split's 120-speaker extension.
cd /work/main
export CDINO_THREADS=1 OMP_NUM_THREADS=1 CDINO_NO_PROGRESS=1
C=/work/exp/corpus_dev120; O=/work/exp/s38/rerank
ev() { name=$1; m=$2; [ -f $O/$name.json ] || .venv/bin/cdino eval --model $m --data $C/dev --trials $C/dev/trials --json $O/$name.json > /dev/null 2>&1; }
list=()
for d in /work/exp/tune1/*/run/model; do a=$(basename $(dirname $(dirname $d))); list+=("tune1_$a $d"); done
for d in /work/exp/s36/b*/*/run/model; do a=$(basename $(dirname $(dirname $d))); list+=("s36_$a $d"); done
for d in /work/exp/s38/k/*/run/model /work/exp/s38/b2/*/run/model /work/exp/s38/sp/*/run/model /work/exp/s38/budget/*/run/model; do a=$(basename $(dirname $(dirname $d))); list+=("s38_$a $d"); done
for ((i = 0; i < ${#list[@]}; i += 2)); do ev ${list[i]} & [ -n "${list[i+1]}" ] && ev ${list[i+1]}; wait; done
echo finished
