"""The ``cdino`` command: verbs → corpus / prepare / train / embed / eval / verify / export / run / demo.

User errors (:class:`cdino.errors.CdinoError`) print one line ``error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of overrides of the defaults (unknown keys are errors)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set trainer.epochs=10 (repeatable)")


def _load_train_config(args):
    from cdino.config import load_config
    from cdino.train.trainer import TrainConfig

    return load_config(TrainConfig, args.config, overrides=args.set)


def cmd_corpus(args) -> int:
    from cdino.corpus.synth import SynthConfig, synthesize
    from cdino.config import from_dict, to_dict

    cfg = SynthConfig.preset(args.preset)
    over = {}
    if args.speakers is not None:
        over["n_train_speakers"] = args.speakers
    if args.test_speakers is not None:
        over["n_test_speakers"] = args.test_speakers
    if args.seed is not None:
        over["seed"] = args.seed
    if args.workers is not None:
        over["workers"] = args.workers
    cfg = from_dict(SynthConfig, {**to_dict(cfg), **over})
    summary = synthesize(Path(args.out), cfg, progress=True)
    print(json.dumps(summary, indent=1, default=str))
    return 0


def cmd_prepare(args) -> int:
    from cdino.data import prepare

    if args.what == "voxceleb":
        summary = prepare.prepare_voxceleb(Path(args.vox1) if args.vox1 else None,
                                           Path(args.vox2) if args.vox2 else None, Path(args.out),
                                           trials_dir=Path(args.trials) if args.trials else None)
    elif args.what == "musan":
        summary = prepare.prepare_musan(Path(args.musan), Path(args.out))
    elif args.what == "rirs":
        summary = prepare.prepare_rirs(Path(args.rirs), Path(args.out))
    else:
        from cdino.data.shards import write_shards

        paths = write_shards(Path(args.data), Path(args.out), shard_mb=args.shard_mb)
        summary = {"shards": len(paths), "list": str(Path(args.out) / "shards.list")}
    print(json.dumps(summary, indent=1, default=str))
    return 0


def cmd_train(args) -> int:
    from dataclasses import replace

    from cdino.train import stages

    cfg = _load_train_config(args)
    if args.method in ("dino", "cdino"):
        if args.init:
            cfg = replace(cfg, dino=replace(cfg.dino, init=args.init))
        model = stages.train_dino(cfg, args.data, args.out, method=args.method, resume=args.resume)
    elif args.method == "supervised":
        model = stages.train_supervised(cfg, args.data, args.out, resume=args.resume)
    else:
        if not args.init:
            raise_error("--method pseudo needs --init MODEL_DIR (a stage-1 model folder)")
        on_round = None
        if args.test_data and args.test_trials:
            from cdino.api import run_eval

            def on_round(r, model_dir, summary):  # reporting only: nothing is chosen on it
                run_eval(model_dir, args.test_data, args.test_trials, Path(model_dir).parent / "eval.json")
        summaries = stages.train_pseudo_rounds(cfg, args.data, args.init, args.out, resume=args.resume,
                                               on_round=on_round)
        model = Path(args.out) / f"round{len(summaries)}" / "model"
        final = Path(args.out) / "model"
        if model.is_dir():
            import shutil

            tmp = final.with_name("model.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(model, tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            model = final
    print(f"model folder: {model}")
    return 0


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def cmd_embed(args) -> int:
    from cdino.api import run_embed

    run_embed(args.model, args.data, args.out, device=_device(args.device))
    return 0


def cmd_eval(args) -> int:
    from cdino.api import run_eval

    run_eval(args.model, args.data, args.trials, args.json, scores_out=args.scores,
             plots_dir=args.plots, asnorm_top_n=args.asnorm, cohort=args.cohort,
             device=_device(args.device))
    return 0


def cmd_verify(args) -> int:
    from cdino.api import run_verify

    line = run_verify(args.model, args.a, args.b, threshold=args.threshold)
    if line:
        print(line)
    return 0


def cmd_export(args) -> int:
    from cdino.api import run_export

    run_export(args.model, args.onnx)
    return 0


def cmd_run(args) -> int:
    from cdino.recipe import run_recipe

    run_recipe(args.recipe, Path(args.out), from_stage=args.from_stage, overrides=args.set)
    return 0


def cmd_demo(args) -> int:
    from cdino.recipe import run_demo

    run_demo(Path(args.out), quick=args.quick, from_stage=args.from_stage)
    return 0


def raise_error(msg: str):
    from cdino.errors import CdinoError

    raise CdinoError(msg)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cdino", description="Self-supervised speaker verification: DINO, "
                                "cluster-aware DINO and pseudo-label training with DLG-LC.")
    from cdino import __version__

    p.add_argument("--version", action="version", version=f"cdino {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    s = sub.add_parser("demo", help="run the whole pipeline on the built-in simulated corpus")
    s.add_argument("--out", default="cdino-demo", help="output folder (default ./cdino-demo)")
    s.add_argument("--quick", action="store_true", help="tiny corpus and few steps (about 2 minutes)")
    s.add_argument("--from", dest="from_stage", help="redo from this stage on")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("run", help="run a recipe (stages in order, finished ones skipped)")
    s.add_argument("recipe", help="recipe YAML file (or a built-in name: demo, quick)")
    s.add_argument("--out", required=True)
    s.add_argument("--from", dest="from_stage", help="redo from this stage on")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("corpus", help="generate the simulated multi-speaker corpus")
    s.add_argument("action", choices=["synth"])
    s.add_argument("--out", required=True)
    s.add_argument("--speakers", type=int, help="training speakers")
    s.add_argument("--test-speakers", type=int, help="test speakers (disjoint)")
    s.add_argument("--seed", type=int)
    s.add_argument("--preset", default="default", choices=["default", "quick", "tiny"])
    s.add_argument("--workers", type=int)
    s.set_defaults(func=cmd_corpus)

    s = sub.add_parser("prepare", help="data folders from local VoxCeleb / MUSAN / RIRS copies, or shards")
    s.add_argument("what", choices=["voxceleb", "musan", "rirs", "shards"])
    s.add_argument("--vox1")
    s.add_argument("--vox2")
    s.add_argument("--trials", help="folder with veri_test2.txt / list_test_all2.txt / list_test_hard2.txt")
    s.add_argument("--musan")
    s.add_argument("--rirs")
    s.add_argument("--data", help="data folder to shard (prepare shards)")
    s.add_argument("--shard-mb", type=int, default=256)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help="train a stage: dino | cdino | pseudo | supervised")
    s.add_argument("--method", required=True, choices=["dino", "cdino", "pseudo", "supervised"])
    s.add_argument("--data", required=True, help="training data folder (wav.scp)")
    s.add_argument("--out", required=True, help="experiment folder")
    s.add_argument("--init", help="start from a model folder (pseudo: required) or a DINO experiment")
    s.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    s.add_argument("--test-data", help="pseudo: evaluate each round on this data folder (reporting only)")
    s.add_argument("--test-trials", help="pseudo: trials for that evaluation")
    _add_config_args(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("embed", help="full-utterance embeddings of a data folder")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("eval", help="EER and minDCF of a model on trials")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--trials", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--scores")
    s.add_argument("--plots")
    s.add_argument("--asnorm", type=int, metavar="TOP_N", help="AS-norm with this cohort top-N")
    s.add_argument("--cohort", help="embedding folder of unlabelled training utterances for AS-norm")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("verify", help="score two audio files and decide same/different speaker")
    s.add_argument("--model", required=True)
    s.add_argument("--threshold", type=float, help="override the model folder's threshold")
    s.add_argument("a")
    s.add_argument("b")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("export", help="export the encoder to ONNX (fbank in, embedding out)")
    s.add_argument("--model", required=True)
    s.add_argument("--onnx", required=True)
    s.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    from cdino.errors import CdinoError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CdinoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable output, disk full, ...: one line naming the file
        where = f"{exc.filename}: " if getattr(exc, "filename", None) and str(exc.filename) not in str(exc) else ""
        print(f"error: {where}{exc.strerror or exc}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command with --resume (or rerun the recipe) to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
