"""The demo recipe over three training seeds (test split, reported only): the issue's goals per seed.

Seed 0 is the demo run of bench/results/demo_results_880s.json; seeds 1 and 2 are whole demo
pipelines with `--set base.trainer.seed=S` on the same corpus (demo_s1_results.json, demo_s2_...).
The stage-only retrains of seeds 1 and 2 (test_s1.json ... test_sup_s2.json) are printed beside
them: the same seeds give the same models, so the two must agree.
"""
import json
from pathlib import Path

here = Path(__file__).parent
runs = {0: here.parent / "demo_results_880s.json", 1: here / "demo_s1_results.json", 2: here / "demo_s2_results.json"}


def eer(name):
    return json.loads((here / name).read_text())["eer"] * 100


per_seed = {}
for seed, path in runs.items():
    res = json.loads(path.read_text())
    st = {s["name"]: s for s in res["stages"]}
    audio = max((n for n in st if n.startswith("pseudo_r")), key=lambda n: int(n.split("_r")[1]))
    final = max((n for n in st if n.startswith("mm_r")), key=lambda n: int(n.split("_r")[1]))
    sup = res["supervised"]["eer"] * 100
    e = {n: st[n]["eer"] * 100 for n in st}
    per_seed[seed] = {
        "eer": {**e, "supervised": sup},
        "round1_purity": st["pseudo_r1"]["purity"],
        "dino_over_supervised": e["dino"] / sup,
        "last_audio_over_supervised": e[audio] / sup,
        "final_over_supervised": e[final] / sup,
        "last_audio": audio, "final": final,
    }
mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
names = per_seed[0]["eer"].keys()
mean_eer = {n: mean([per_seed[s]["eer"][n] for s in per_seed]) for n in names}
sup = mean_eer["supervised"]
print(json.dumps({
    "bench": "demo_seeds", "split": "test (reported only; nothing chosen)",
    "per_seed": per_seed,
    "mean_eer": mean_eer,
    "of_the_means": {"dino_over_supervised": mean_eer["dino"] / sup,
                     "last_audio_over_supervised": mean_eer[per_seed[0]["last_audio"]] / sup,
                     "final_over_supervised": mean_eer[per_seed[0]["final"]] / sup,
                     "round1_purity": mean([per_seed[s]["round1_purity"] for s in per_seed])},
    "stage_only_retrains": {"dino": {1: eer("test_s1.json"), 2: eer("test_s2.json")},
                            "supervised": {1: eer("test_sup_s1.json"), 2: eer("test_sup_s2.json")},
                            "seed0_dino_at_one_thread": eer("test_s0t1.json")},
}, indent=1))
