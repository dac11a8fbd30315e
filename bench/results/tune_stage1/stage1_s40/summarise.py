"""Dev-120 EER of this stop's stage-1 arms against the recipe, seed by seed (dev split only)."""
import json
from pathlib import Path

here = Path(__file__).parent


def arms(path):
    return {a["arm"]: a for a in json.loads(Path(path).read_text())["arms"]}


runs = {}
for name in ("run_a.json", "run_b.json", "run_b2.json", "run_c.json", "run_d.json"):
    runs.update(arms(here / name))
evals = here.parent / "rerank_dev120" / "evals"
recipe = {0: json.loads((evals / "s38_freeze0.json").read_text())["eer"],
          1: json.loads((evals / "s38_freeze0_s1.json").read_text())["eer"],
          2: arms(here.parent.parent / "demo_seeds" / "run_dino_s2.json")["freeze0_s2"]["dev_eer"],
          3: runs["rec_s3"]["dev_eer"], 4: runs["rec_s4"]["dev_eer"]}
s39 = {a["arm"]: a for n in ("run_a.json", "run_b.json", "run_c.json")
       for a in json.loads((here.parent / "stage1_s39" / n).read_text())["arms"]}
out = {"recipe": {"dev_eer": recipe, "mean": sum(recipe.values()) / len(recipe)}}
for arm in ("tclean", "g3x135", "g3chan", "chan_full"):
    eer = {}
    for seed in range(5):
        key = arm if seed == 0 else f"{arm}_s{seed}"
        src = runs.get(key) or s39.get(key)
        if src and "dev_eer" in src:
            eer[seed] = src["dev_eer"]
    diff = {s: eer[s] - recipe[s] for s in eer}
    out[arm] = {"dev_eer": eer, "minus_recipe": diff, "mean": sum(eer.values()) / len(eer),
                "recipe_mean_same_seeds": sum(recipe[s] for s in eer) / len(eer),
                "lower_in": sum(d < 0 for d in diff.values()), "seeds": len(eer)}
print(json.dumps(out, indent=1))
