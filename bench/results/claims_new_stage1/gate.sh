# One audio round (the demo's settings, 300 clusters, 3 epochs) per gate variant from the C-DINO model of seed $1.
cd /work/main
s=$1; X=/work/exp/s36/claim; C=/tmp/demoH/corpus
export CDINO_THREADS=1 OMP_NUM_THREADS=1 CDINO_NO_PROGRESS=1
B=.venv/bin/cdino
if [ "$s" = 0 ]; then CD=/tmp/demoH/cdino; else CD=$X/cdino_s$s; fi
declare -A V
V[gate_off]="--set pseudo.gate.mode=off --set pseudo.correction.enabled=false"
V[fixed_gate]="--set pseudo.gate.mode=fixed --set pseudo.gate.fixed_threshold=3.0 --set pseudo.correction.enabled=false"
V[dlg]="--set pseudo.correction.enabled=false"
V[dlg_lc]=""
for v in gate_off fixed_gate dlg dlg_lc; do
  $B train --recipe demo --stage pseudo --data $C/train --out $X/${v}_s$s --init $CD/model --set trainer.seed=$s --set pseudo.rounds=1 ${V[$v]} --resume || exit 1
  M=$(ls -d $X/${v}_s$s/round1/model 2>/dev/null || ls -d $X/${v}_s$s/model)
  $B eval --model $M --data $C/test --trials $C/test/trials --json $X/${v}_s${s}_test.json --scores $X/${v}_s${s}_test_scores.txt || exit 1
done
echo done
