"""When does the loss gate pay? One pseudo-label round on labels of known noise.

Takes the true speaker labels of a training folder, replaces a fraction ``p`` of them by
random other speakers (the noise a clustering makes, without its structure), and trains
one DLG-LC-style round from a given model with each gate setting (``gate_off``,
``fixed_gate``: the study's fixed threshold, ``dlg``: dynamic gate without correction,
``dlg_lc``), as the recipe's pseudo stage would; prints one JSON object with the dev EER of every (p, setting) and, from the true labels (a
diagnostic), the gate's precision and recall in the last epoch. This measures the gate's
gain as a function of label noise, which the study's claims depend on.

    python bench/gate_vs_noise.py --corpus exp/corpus --init exp/demo/cdino/model --recipe demo \
        --noise 0.1 0.3 0.5 > bench/results/gate_vs_noise.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

SETTINGS = {
    "gate_off": {"gate": {"mode": "off"}, "correction": {"enabled": False}},
    "fixed_gate": None,  # the study's arm, read from its recipe (ablations.yaml) so the two cannot drift
    "dlg": {"correction": {"enabled": False}},
    "dlg_lc": {},
}


def noisy_labels(true: np.ndarray, p: float, seed: int = 0) -> np.ndarray:
    """``true`` with a fraction ``p`` (each label with probability ``p``) replaced by another
    speaker drawn at random, never the true one; seeded by ``(seed, p)``."""
    rng = np.random.default_rng([seed, int(round(1000 * p))])
    labels = true.copy()
    flip = rng.random(len(labels)) < p
    shift = rng.integers(1, true.max() + 1, int(flip.sum()))
    labels[flip] = (true[flip] + shift) % (true.max() + 1)
    return labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True, help="corpus with train/ (utt2spk) and dev/ (trials)")
    ap.add_argument("--init", type=Path, required=True, help="model folder the round starts from")
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from cdino.config import from_dict, to_dict
    from cdino.console import progress_enabled
    from cdino.data.kaldi_dir import DataDir
    from cdino.data.stores import open_store
    from cdino.distributed import resolve_device
    from cdino.eval.model_folder import read_model_folder
    from cdino.methods.pseudo_label import PseudoLabelMethod
    from cdino.pipeline.method import load_recipe, stage_train_config
    from cdino.pipeline.recipe_source import merge_overrides
    from cdino.train.stages import export_model
    from cdino.train.trainer import TrainConfig, Trainer
    from cdino.verbs import run_eval

    base, _ = stage_train_config(args.recipe, "pseudo")
    settings = {name: over if over is not None else load_recipe("ablations").ablations[name]["pseudo"]
                for name, over in SETTINGS.items()}
    data = DataDir.load(args.corpus / "train")
    store = open_store(data, base.data, progress=False)
    true = data.speaker_labels(store.utts)[0]
    init = {k: v.clone() for k, v in read_model_folder(args.init).encoder.state_dict().items()}
    results = []
    for p in args.noise:
        labels = noisy_labels(true, p, args.seed)
        for name in args.settings:
            out = args.out / f"noise{p:g}_{name}"
            t0 = time.perf_counter()
            if not (out / "model" / "encoder.safetensors").is_file():
                cfg = from_dict(TrainConfig, merge_overrides(to_dict(base), {"pseudo": settings[name]}))
                method = PseudoLabelMethod(labels, init_encoder=init, true_labels=true, name=name)
                trainer = Trainer(cfg, method, data, out, resume=(out / "checkpoints").is_dir(), store=store)
                history = trainer.fit()
                export_model(trainer.final_encoder(), cfg, store, resolve_device(cfg.trainer.device), out / "model",
                             {"method": "pseudo", "label_noise": p, "setting": name, "history": history},
                             progress=progress_enabled(cfg.trainer.progress), embed_all=False)
                (out / "history.json").write_text(json.dumps(history))
            history = json.loads((out / "history.json").read_text())
            with contextlib.redirect_stdout(sys.stderr):  # stdout carries the one JSON object
                dev = run_eval(out / "model", args.corpus / "dev", args.corpus / "dev" / "trials", out / "dev.json",
                               progress=False, label=f"noise {p:g} {name}")
            last = history[-1] if history else {}
            results.append({"noise": p, "setting": name, "dev_eer": dev["eer"], "seconds": time.perf_counter() - t0,
                            **{k: last.get(k) for k in ("reliable_fraction", "corrected_fraction", "gate_precision",
                                                         "gate_recall", "correction_accuracy", "wrong_fraction")}})
    print(json.dumps({"bench": "gate_vs_noise", "recipe": args.recipe, "init": str(args.init),
                      "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
