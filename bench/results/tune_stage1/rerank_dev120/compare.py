"""40-speaker dev EER (the tuning runs' own) against the 120-speaker dev split, per stage-1 arm."""
import glob, json, os
import numpy as np
from scipy.stats import spearmanr
rows = []
for f in sorted(glob.glob("/work/exp/s38/rerank/*.json")):
    name = os.path.basename(f)[:-5]
    if "_" not in name or name.split("_", 1)[0] not in ("tune1", "s36", "s38"):
        continue
    group, arm = name.split("_", 1)
    base = {"tune1": "/work/exp/tune1", "s36": "/work/exp/s36/b*", "s38": "/work/exp/s38/*"}[group]
    res = glob.glob(f"{base}/{arm}/result.json")
    if len(res) != 1:
        continue
    r = json.load(open(res[0]))
    if "dev_eer" not in r or r.get("stage", "dino") != "dino" or arm.startswith("sup"):
        continue
    rows.append({"arm": name, "dev40": r["dev_eer"], "dev120": json.load(open(f))["eer"]})
a = np.array([r["dev40"] for r in rows]); b = np.array([r["dev120"] for r in rows])
rho = spearmanr(a, b).correlation
out = {"n": len(rows), "spearman": float(rho), "best_dev40": rows[int(a.argmin())]["arm"],
       "best_dev120": rows[int(b.argmin())]["arm"], "rows": sorted(rows, key=lambda r: r["dev120"])}
print(json.dumps(out, indent=1))
