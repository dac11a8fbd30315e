# C-DINO against DINO continued at equal cost, from the demo recipe's DINO (this stop's), seed $1.
# Seed 0 reuses the demo run's DINO and C-DINO (/tmp/demoH); seeds 1 and 2 train them.
cd /work/main
s=$1; X=/work/exp/s36/claim; C=/tmp/demoH/corpus
export CDINO_THREADS=1 OMP_NUM_THREADS=1 CDINO_NO_PROGRESS=1
B=.venv/bin/cdino
if [ "$s" = 0 ]; then D=/tmp/demoH/dino; CD=/tmp/demoH/cdino; else
  D=$X/dino_s$s; CD=$X/cdino_s$s
  $B train --recipe demo --stage dino --data $C/train --out $D --set trainer.seed=$s --resume || exit 1
  $B train --recipe demo --stage cdino --data $C/train --out $CD --init $D --set trainer.seed=$s --resume || exit 1
fi
# DINO continued for C-DINO's epoch with C-DINO's settings (its crops, schedule, no regularisers); only the cluster-aware positives differ
$B train --recipe demo --stage dino --data $C/train --out $X/cont_s$s --init $D --set trainer.seed=$s --set trainer.epochs=1 --set optim.warmup_epochs=0.0 --set optim.lr=0.001 --set dino.ema_start=0.995 --set dino.teacher_temp=0.07 --set dino.freeze_last_layer_epochs=0 --set dino.teacher_temp_warmup=0.2 --set dino.n_local=2 --set dino.diversity_weight=0.0 --set dino.decorrelation_weight=0.0 --resume || exit 1
for m in cdino cont; do
  if [ $m = cdino ]; then M=$CD/model; else M=$X/cont_s$s/model; fi
  $B eval --model $M --data $C/test --trials $C/test/trials --json $X/${m}_s${s}_test.json --scores $X/${m}_s${s}_test_scores.txt || exit 1
  $B eval --model $M --data $C/dev --trials $C/dev/trials --json $X/${m}_s${s}_dev.json || exit 1
done
echo done
