"""DINO / supervised at equal steps over three seeds of the demo recipe (test split, reported only)."""
import json


def eer(name):
    return json.load(open(name))["eer"] * 100


dino = {0: eer("test_demoL_dino.json"), 1: eer("test_s1.json"), 2: eer("test_s2.json")}
sup = {0: eer("test_demoL_supervised.json"), 1: eer("test_sup_s1.json"), 2: eer("test_sup_s2.json")}
ratio = {s: dino[s] / sup[s] for s in dino}
mean_dino, mean_sup = sum(dino.values()) / 3, sum(sup.values()) / 3
print(json.dumps({
    "bench": "demo_seeds", "split": "test (reported only; nothing chosen)",
    "dino_eer": dino, "supervised_eer": sup, "ratio_per_seed": ratio,
    "mean_dino": mean_dino, "mean_supervised": mean_sup, "ratio_of_means": mean_dino / mean_sup,
    "mean_of_ratios": sum(ratio.values()) / 3,
    "seed0_dino_retrained_one_thread": eer("test_s0t1.json"),
}, indent=1))
