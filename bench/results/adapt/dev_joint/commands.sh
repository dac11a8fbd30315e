cd /work/main
D=/work/exp/adapt_s0/corpus/target/dev
mkdir -p /work/exp/devj
for s in 0 1 2; do
  for pair in "aligned:/work/exp/adapt_s$s/adapt/aligned" "r1:/work/exp/adapt_s$s/adapt/round1/model" "r2:/work/exp/adapt_s$s/adapt/round2/model" \
              "joint_r1:/work/exp/adaptj_s$s/adapt/round1/model" "joint_r2:/work/exp/adaptj_s$s/adapt/round2/model"; do
    n=${pair%%:*}; m=${pair#*:}
    [ -f /work/exp/devj/s${s}_$n.json ] && continue
    CDINO_THREADS=1 .venv/bin/cdino eval --model $m --data $D --trials $D/trials --json /work/exp/devj/s${s}_$n.json > /work/exp/devj/s${s}_$n.log 2>&1
  done
done
echo done
