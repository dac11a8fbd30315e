"""Do ``cdino verify``, ``cdino score``, the Python API and ``cdino eval`` decide a model's
trials alike? One JSON object: each path's decisions on the first ``--n`` trials of a list,
and how many differ from the API's.

The API (``SpeakerModel.verify``), ``cdino score`` (a pairs file of audio paths) and
``cdino verify`` (one call per trial, as a user types it) decide from the audio; ``cdino
eval``'s decisions are its scores at its reported ``decision_threshold``. Scores of the
verbs are computed with their default inference rewrite (bf16 products on CPUs that have
them), the API's and eval's in fp32, so a score within rounding of the threshold could in
principle flip; such trials are counted apart (``near_threshold``).

    python bench/check_decisions.py --model /tmp/demoF/model --data /tmp/demoF/corpus/test --n 400
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="data folder with wav.scp and trials")
    ap.add_argument("--trials", type=Path, help="default DATA/trials")
    ap.add_argument("--n", type=int, default=400, help="trials checked (the first N of the list)")
    ap.add_argument("--n-verify", type=int, default=400, help="of those, run through `cdino verify` one by one")
    args = ap.parse_args(argv)

    from cdino.api import load_model
    from cdino.data.kaldi_dir import DataDir
    from cdino.verbs import run_eval, run_score, run_verify

    trials_path = args.trials or args.data / "trials"
    lines = [ln.split() for ln in trials_path.read_text().splitlines() if ln.strip()][: args.n]
    wav = DataDir.load(args.data).wav
    pairs = [(wav[e], wav[t]) for e, t, _ in lines]
    model = load_model(args.model)
    decided = [model.verify(a, b) for a, b in pairs]  # (score, same) each
    api_scores = [float(score) for score, _ in decided]
    api = [bool(same) for _, same in decided]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "pairs").write_text("".join(f"{a} {b}\n" for a, b in pairs))
        with contextlib.redirect_stdout(io.StringIO()):
            run_score(args.model, tmp / "pairs", tmp / "scored", progress=False)
        score_verb = [ln.split()[3] == "same" for ln in (tmp / "scored").read_text().splitlines()]
        (tmp / "trials").write_text("".join(" ".join(ln) + "\n" for ln in lines))
        with contextlib.redirect_stdout(io.StringIO()):
            res = run_eval(args.model, args.data, tmp / "trials", tmp / "eval.json",
                           scores_out=tmp / "scores", progress=False)
        eval_scores = [float(ln.split()[2]) for ln in (tmp / "scores").read_text().splitlines()]
    cut = float(res["decision_threshold"])
    eval_dec = [s >= cut for s in eval_scores]
    verify = []
    for a, b in pairs[: args.n_verify]:
        with contextlib.redirect_stdout(io.StringIO()):
            line = run_verify(args.model, a, b, as_json=True)
        verify.append(json.loads(line)["decision"] == "same")

    def differ(other: list[bool]) -> int:
        return sum(x != y for x, y in zip(api, other))

    near = sum(abs(s - cut) < 2e-3 for s in api_scores)
    out = {"bench": "check_decisions", "model": str(args.model), "trials": str(trials_path),
           "n_trials": len(pairs), "n_verify": len(verify), "decision_threshold": cut,
           "threshold_source": model.threshold_source, "api_same": sum(api),
           "disagreements_with_api": {"score": differ(score_verb), "verify": differ(verify),
                                      "eval": differ(eval_dec)},
           "near_threshold": near}
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
