# One audio-visual DLG-LC round (the demo's mm settings, 1 round) from the C-DINO model of seed $1.
cd /work/main
s=$1; X=/work/exp/s36/claim; C=/tmp/demoH/corpus
export CDINO_THREADS=1 OMP_NUM_THREADS=1 CDINO_NO_PROGRESS=1
B=.venv/bin/cdino
if [ "$s" = 0 ]; then CD=/tmp/demoH/cdino; else CD=$X/cdino_s$s; fi
$B train --recipe demo --stage mm --data $C/train --out $X/audio_visual_s$s --init $CD/model --set trainer.seed=$s --set pseudo.rounds=1 --resume || exit 1
$B eval --model $X/audio_visual_s$s/model --data $C/test --trials $C/test/trials --json $X/audio_visual_s${s}_test.json --scores $X/audio_visual_s${s}_test_scores.txt || exit 1
echo done
