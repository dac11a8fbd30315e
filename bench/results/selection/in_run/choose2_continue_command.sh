cd /work/main
date
.venv/bin/cdino run demo --out /work/exp/choose2 --set evaluate_dev=true --set multimodal=false --set run_supervised=false \
  --set final=pseudo_rR --set data.valid=/work/exp/choose2/corpus/dev --set pseudo.pseudo.rounds=5 --set pseudo.pseudo.stop=never \
  --set 'choose={pseudo.kmeans.n_clusters: [150, 200, 300, 450], pseudo.correction.temperature: [1.0, 1.5, 2.0, 3.0], pseudo.correction.max_moves_per_class: [0, 0.25, 0.5, 1.0]}'
echo rc=$?
date
