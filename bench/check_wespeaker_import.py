"""How closely imported WeSpeaker models reproduce WeSpeaker's embeddings, as one JSON object.

For each fixture folder (a WeSpeaker release with ``embeddings.npy``, WeSpeaker's own
embeddings of ``clip0..2.wav``; see the fixtures' README), ``cdino import wespeaker`` writes
a model folder, and the relative L2 errors of the embeddings and of their deviations from
the mean over the clips are measured along three paths:

- ``fbank_path``: WeSpeaker's features (``fbank.npz``) through the imported encoder: the
  model mapping alone;
- ``wav_path``: the clips through ``cdino.load_model(...).embed_batch`` (cdino's fbank, then
  the fp32 encoder): the whole path;
- ``wav_path_optimized``: the same with ``optimize=True`` (the inference rewrite that
  ``cdino embed / verify / score`` use; bf16 products on CPUs with native bf16).

The tests check the narrow folders (``tests/data/wespeaker``); this checks the full-size ones.

    python bench/check_wespeaker_import.py ../shared/fixtures/wespeaker > bench/results/wespeaker/import_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

import cdino
from cdino.models.inference import fast_bf16
from cdino.models.wespeaker_import import read_wespeaker
from cdino.verbs import run_import_wespeaker

FULL_SIZE = ("resnet34", "ecapa_tdnn_glob_c512")
TOLERANCE = 1e-4


def errors(got: np.ndarray, ref: np.ndarray) -> dict:
    """Relative L2 error of the embeddings and of their deviations from the clips' mean."""
    dev_got, dev_ref = got - got.mean(0), ref - ref.mean(0)
    return {"embeddings": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
            "deviations": float(np.linalg.norm(dev_got - dev_ref) / np.linalg.norm(dev_ref))}


def check(fixtures: Path, name: str, workdir: Path) -> dict:
    release = fixtures / name
    ref = np.load(release / "embeddings.npy")
    clips = sorted(fixtures.glob("clip*.wav"))
    fbank = np.load(fixtures / "fbank.npz")
    imported = read_wespeaker(release)
    with torch.no_grad():
        from_feats = np.concatenate([imported.encoder(torch.from_numpy(fbank[c.stem])[None]).numpy()
                                     for c in clips])
    with contextlib.redirect_stdout(io.StringIO()):
        folder = run_import_wespeaker(release, workdir / name)
    model = cdino.load_model(folder)
    feature_diff = max(float((model.features(c)[0].numpy() - fbank[c.stem]).__abs__().max()) for c in clips)
    result = {"model": name, "encoder": imported.config.name,
              "wespeaker_model": imported.info["wespeaker_model"],
              "checkpoint_dtype": imported.info["checkpoint_dtype"], "embed_dim": int(ref.shape[1]),
              "fbank_path": errors(from_feats, ref),
              "wav_path": errors(model.embed_batch(clips), ref),
              "wav_path_optimized": errors(cdino.load_model(folder, optimize=True).embed_batch(clips), ref),
              "fbank_max_abs_diff": feature_diff}
    result["within_tolerance"] = all(v <= TOLERANCE for key in ("fbank_path", "wav_path")
                                     for v in result[key].values())
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fixtures", type=Path, nargs="?", default=Path("../shared/fixtures/wespeaker"),
                    help="the WeSpeaker fixture folder (default ../shared/fixtures/wespeaker)")
    ap.add_argument("--models", nargs="+", default=list(FULL_SIZE),
                    help=f"release folders in it to check (default: {' '.join(FULL_SIZE)})")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [check(args.fixtures, name, Path(tmp)) for name in args.models]
    print(json.dumps({"bench": "check_wespeaker_import", "fixtures": str(args.fixtures),
                      "tolerance": TOLERANCE, "torch": torch.__version__,
                      "optimized_precision": "bf16" if fast_bf16() else "fp32", "models": rows}, indent=1))


if __name__ == "__main__":
    main()
