# Telephone dev split: the joint round 1 models of the three seeds of adapt/joint_one_round (runs /work/exp/adaptj1_s{0,1,2},
# 'cdino run adapt --out RUN --set base.trainer.seed=S' at tree 67c357e), with and without their BatchNorm statistics re-estimated
# on the target training recordings (cdino.train.domain.align_to_domain = the recipe's alignment step), scored on the target dev
# trials (s{S}_{r1,r1bn}_dev.json) and on the source-domain dev trials (s{S}_{source,r1,r1bn,r1srcbn}_srcdev.json;
# r1srcbn: statistics of the source recordings instead). Test trials not read.
# run.py (target dev):
#   import sys, json, subprocess
#   from pathlib import Path
#   from cdino.pipeline.adapt import load_adapt_recipe, AdaptPipeline
#   from cdino.train.domain import align_to_domain
#   s = int(sys.argv[1])
#   run = Path(f"/work/exp/adaptj1_s{s}")
#   rec = load_adapt_recipe("adapt", [f"base.trainer.seed={s}"])
#   pipe = AdaptPipeline(rec, run)
#   cfg = pipe.train_config("adapt")
#   out = Path(f"/work/exp/rebn/s{s}_r1bn")
#   if not (out / "config.yaml").is_file():
#       align_to_domain(run / "adapt/round1/model", cfg, run / "corpus/target/train", out)
#   D = run / "corpus/target/dev"
#   for name, m in (("r1", run / "adapt/round1/model"), ("r1bn", out)):
#       j = Path(f"/work/exp/rebn/s{s}_{name}_dev.json")
#       if not j.is_file():
#           subprocess.run(["/work/main/.venv/bin/cdino", "eval", "--model", str(m), "--data", str(D), "--trials", str(D / "trials"), "--json", str(j)], check=True, capture_output=True)
#       print(s, name, json.loads(j.read_text())["eer"], json.loads(j.read_text())["actdcf_0.01"], flush=True)
# src.py (source dev):
#   import sys, json, subprocess
#   from pathlib import Path
#   from cdino.pipeline.adapt import load_adapt_recipe, AdaptPipeline
#   from cdino.train.domain import align_to_domain
#   s = int(sys.argv[1])
#   run = Path(f"/work/exp/adaptj1_s{s}")
#   rec = load_adapt_recipe("adapt", [f"base.trainer.seed={s}"])
#   pipe = AdaptPipeline(rec, run)
#   cfg = pipe.train_config("adapt")
#   out = Path(f"/work/exp/rebn/s{s}_r1srcbn")
#   if not (out / "config.yaml").is_file():
#       align_to_domain(run / "adapt/round1/model", cfg, run / "corpus/source/train", out)
#   D = run / "corpus/source/dev"
#   for name, m in (("source", run / "source/model"), ("r1", run / "adapt/round1/model"), ("r1bn", Path(f"/work/exp/rebn/s{s}_r1bn")), ("r1srcbn", out)):
#       j = Path(f"/work/exp/rebn/s{s}_{name}_srcdev.json")
#       if not j.is_file():
#           subprocess.run(["/work/main/.venv/bin/cdino", "eval", "--model", str(m), "--data", str(D), "--trials", str(D / "trials"), "--json", str(j)], check=True, capture_output=True)
#       print(s, name, json.loads(j.read_text())["eer"], json.loads(j.read_text())["actdcf_0.01"], flush=True)
for s in 0 1 2; do CDINO_THREADS=1 python run.py $s; done
for s in 0 1 2; do CDINO_THREADS=2 python src.py $s; done
