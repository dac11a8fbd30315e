cd /work/main
s=$1; X=/work/exp/cd12; C=/work/exp/demo_long/corpus
export CDINO_THREADS=1 OMP_NUM_THREADS=1 CDINO_NO_PROGRESS=1
B=.venv/bin/cdino
$B train --recipe demo --stage dino --data $C/train --out $X/dino_s$s --set trainer.epochs=12 --set trainer.seed=$s --resume || exit 1
$B train --recipe demo --stage cdino --data $C/train --out $X/cdino_s$s --init $X/dino_s$s --set trainer.seed=$s --resume || exit 1
$B train --recipe demo --stage dino --data $C/train --out $X/cont_s$s --init $X/dino_s$s --set trainer.seed=$s --set trainer.epochs=1 --set optim.warmup_epochs=0.0 --set optim.lr=0.001 --set dino.ema_start=0.995 --set dino.teacher_temp=0.07 --set dino.freeze_last_layer_epochs=0 --set dino.teacher_temp_warmup=0.2 --resume || exit 1
for m in cdino cont; do
  $B eval --model $X/${m}_s$s/model --data $C/test --trials $C/test/trials --json $X/${m}_s${s}_test.json --scores $X/${m}_s${s}_test_scores.txt || exit 1
  $B eval --model $X/${m}_s$s/model --data $C/dev --trials $C/dev/trials --json $X/${m}_s${s}_dev.json || exit 1
done
echo done
