"""The ``cdino`` command: verbs → corpus / prepare / train / embed / eval / verify / score / export /
calibrate / import / run / demo.

User errors (:class:`cdino.errors.CdinoError`) print one line ``error: ...`` and exit 2;
``cdino verify --json`` also prints them as a JSON object on stdout.
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

    names = {"speakers": "n_train_speakers", "test_speakers": "n_test_speakers",
             "dev_speakers": "n_dev_speakers", "dev_trials": "n_dev_trials", "seed": "seed", "workers": "workers"}
    over = {key: getattr(args, flag) for flag, key in names.items() if getattr(args, flag) is not None}
    cfg = SynthConfig.preset(args.preset, domain=args.domain, **over)
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

    if args.recipe:
        from cdino.config import read_yaml
        from cdino.pipeline.method import stage_train_config

        if not args.stage:
            raise_error("--recipe needs --stage (dino, cdino, pseudo, mm or supervised)")
        cfg, method = stage_train_config(args.recipe, args.stage, overrides=args.set,
                                         extra=read_yaml(args.config) if args.config else None)
        if args.method and args.method != method:
            raise_error(f"--method {args.method} does not match --stage {args.stage} ({method})")
        args.method = method
    elif not args.method:
        raise_error("cdino train needs --method (or --recipe and --stage)")
    else:
        cfg = _load_train_config(args)
    if args.method in ("dino", "cdino"):
        if args.init:
            cfg = replace(cfg, dino=replace(cfg.dino, init=args.init))
        model = stages.train_dino(cfg, args.data, args.out, method=args.method, resume=args.resume)
    elif args.method == "supervised":
        model = stages.train_supervised(cfg, args.data, args.out, resume=args.resume, init=args.init)
    else:
        if not args.init:
            raise_error("--method pseudo needs --init MODEL_DIR (a stage-1 model folder)")
        on_round = None
        if args.test_data and args.test_trials:
            from cdino.verbs import run_eval

            from cdino.distributed import resolve_device

            def evaluate_round(r, model_dir, summary):  # reporting only: nothing is chosen on it
                run_eval(model_dir, args.test_data, args.test_trials, Path(model_dir).parent / "eval.json",
                         label=f"round{r}", device=str(resolve_device(cfg.trainer.device)),
                         distributed=True, num_workers=cfg.data.num_workers)

            on_round = evaluate_round
        summaries = stages.train_pseudo_rounds(cfg, args.data, args.init, args.out, resume=args.resume,
                                               on_round=on_round)
        model = Path(args.out) / f"round{len(summaries)}" / "model"
        final = Path(args.out) / "model"
        from cdino.distributed import barrier, is_main

        if model.is_dir():
            if is_main():  # one writer under torchrun
                from cdino.atomic import copy_folder

                copy_folder(model, final)
            barrier()
            model = final
    from cdino.distributed import is_main

    if is_main():
        print(f"model folder: {model}")
    return 0


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _ranks(device: str) -> tuple[str, bool]:
    """Under torchrun: join the process group; returns (this rank's device, distributed)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _device(device), False
    from cdino.distributed import init_distributed, resolve_device

    dev = resolve_device(device)
    init_distributed(dev)
    return str(dev), True


def cmd_embed(args) -> int:
    from cdino.verbs import run_embed

    device, distributed = _ranks(args.device)
    run_embed(args.model, args.data, args.out, device=device, distributed=distributed,
              num_workers=args.workers)
    return 0


def cmd_eval(args) -> int:
    from cdino.verbs import run_eval

    device, distributed = _ranks(args.device)
    run_eval(args.model, args.data, args.trials, args.json, scores_out=args.scores,
             plots_dir=args.plots, asnorm_top_n=args.asnorm, cohort=args.cohort,
             device=device, distributed=distributed, num_workers=args.workers, enroll=args.enroll)
    return 0


def cmd_verify(args) -> int:
    from cdino.verbs import run_verify

    if args.enroll is not None or args.test is not None:
        if args.files or args.enroll is None or args.test is None:
            raise_error("verify takes either two files (cdino verify --model M a.wav b.wav) or "
                        "--enroll FILE... --test FILE, not a mix")
        enroll, test = (args.enroll if len(args.enroll) > 1 else args.enroll[0]), args.test
    elif len(args.files) == 2:
        enroll, test = args.files
    else:
        raise_error(f"verify takes two audio files (or --enroll FILE... --test FILE), got "
                    f"{len(args.files)}")
    run_verify(args.model, enroll, test, threshold=args.threshold, device=_device(args.device),
               as_json=args.json, prior=args.prior)  # prints its line (or JSON) itself
    return 0


def cmd_calibrate(args) -> int:
    from cdino.verbs import run_calibrate

    run_calibrate(args.model, args.data, args.trials, prior=args.prior, enroll=args.enroll,
                  device=_device(args.device), num_workers=args.workers, clusters=args.clusters,
                  recentre=args.recentre)
    return 0


def cmd_score(args) -> int:
    from cdino.verbs import run_score

    run_score(args.model, args.pairs, args.out, data_dir=args.data, threshold=args.threshold,
              device=_device(args.device))
    return 0


def cmd_export(args) -> int:
    from cdino.verbs import run_export

    run_export(args.model, args.onnx)
    return 0


def cmd_import(args) -> int:
    from cdino.verbs import run_import_wespeaker

    run_import_wespeaker(args.source, args.out)
    return 0


def cmd_select(args) -> int:
    from cdino.verbs import run_select

    run_select(args.candidates, args.data, criterion=args.criterion, json_out=args.json,
               max_utts=args.max_utts, device=_device(args.device))
    return 0


def cmd_run(args) -> int:
    from cdino.pipeline.run import run_recipe

    run_recipe(args.recipe, Path(args.out), from_stage=args.from_stage, overrides=args.set)
    return 0


def cmd_demo(args) -> int:
    from cdino.pipeline.run import run_demo

    run_demo(Path(args.out), quick=args.quick, from_stage=args.from_stage)
    return 0


def _error_line(exc: Exception) -> str:
    """The one line a user error prints after ``error:``; an ``OSError`` names its file."""
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) and str(exc.filename) not in str(exc) else ""
        return f"{where}{exc.strerror or exc}".replace("\n", " ")
    return str(exc)


def _error_object(message: str, inputs: list) -> dict:
    """``{"error": message}``, with ``"file"`` when the message starts by naming one of the
    command's ``inputs`` (or a file inside one, e.g. a model folder's config.yaml)."""
    head = message.split(": ", 1)[0]
    for path in (str(p) for p in inputs if p is not None):
        if head == path or head.startswith(path.rstrip("/") + "/"):
            return {"error": message, "file": head}
    return {"error": message}


def raise_error(msg: str):
    from cdino.errors import CdinoError

    raise CdinoError(msg)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cdino", description="Self-supervised speaker verification: DINO, "
                                "cluster-aware DINO and pseudo-label training with DLG-LC.")
    from cdino import __version__

    p.add_argument("--version", action="version", version=f"cdino {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    from cdino.pipeline.method import STAGES

    from_help = f"redo from this stage on; stages in order: {', '.join(STAGES)}"
    device_help = "cpu, cuda, cuda:N or auto (CUDA when present; default auto)"

    s = sub.add_parser("demo", help="run the whole pipeline on the built-in simulated corpus")
    s.add_argument("--out", default="cdino-demo", help="output folder (default ./cdino-demo)")
    s.add_argument("--quick", action="store_true", help="tiny corpus and few steps (about 4 minutes on 2 cores)")
    s.add_argument("--from", dest="from_stage", metavar="STAGE", help=from_help)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("run", help="run a recipe (stages in order, finished ones skipped)")
    s.add_argument("recipe", help="recipe YAML file (or a built-in name: demo, quick, ablations, ablations-quick, adapt, adapt-quick; "
                                  "a recipe with `kind: adapt` runs the domain-adaptation pipeline)")
    s.add_argument("--out", required=True, help="experiment folder (stages write EXP/<stage>/)")
    s.add_argument("--from", dest="from_stage", metavar="STAGE",
                   help=from_help + "; adaptation recipes: corpus, source, adapt, select, oracle, report")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value (KEY: a dotted path into the recipe YAML; repeatable)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("corpus", help="generate the simulated multi-speaker corpus")
    s.add_argument("action", choices=["synth"], help="synth: synthesise the corpus")
    s.add_argument("--out", required=True, help="corpus folder to write")
    s.add_argument("--speakers", type=int, help="training speakers (default: the preset's)")
    s.add_argument("--test-speakers", type=int, help="test speakers, disjoint from training (default: the preset's)")
    s.add_argument("--dev-speakers", type=int,
                   help="labelled dev speakers, disjoint from train and test, to choose settings on "
                        "(0: no dev split; more narrow its estimates; train and test stay the same; "
                        "default: the preset's)")
    s.add_argument("--dev-trials", type=int, help="dev trials, half target (default: the preset's)")
    s.add_argument("--seed", type=int, help="random seed (same seed, same corpus; default: the preset's)")
    s.add_argument("--preset", default="default", choices=["default", "quick", "tiny"],
                   help="corpus size: default (the demo's), quick or tiny (default: default)")
    s.add_argument("--domain", default="default",
                   help="simulated domain: default (English, mostly wideband) or telephone (8 kHz calls "
                        "with codecs in eight other languages, other noises, other speakers; docs/corpus.md)")
    s.add_argument("--workers", type=int, help="synthesis processes (default: the preset's)")
    s.set_defaults(func=cmd_corpus)

    s = sub.add_parser("prepare", help="data folders from local VoxCeleb / MUSAN / RIRS copies, or shards")
    s.add_argument("what", choices=["voxceleb", "musan", "rirs", "shards"], help="what to prepare")
    s.add_argument("--vox1", help="voxceleb: local VoxCeleb1 copy (holding wav/idXXXXX/<video>/00001.wav)")
    s.add_argument("--vox2", help="voxceleb: local VoxCeleb2 dev copy")
    s.add_argument("--trials", help="folder with veri_test2.txt / list_test_all2.txt / list_test_hard2.txt")
    s.add_argument("--musan", help="musan: local MUSAN copy (noise/ speech/ music/)")
    s.add_argument("--rirs", help="rirs: local RIRS_NOISES copy")
    s.add_argument("--data", help="data folder to shard (prepare shards)")
    s.add_argument("--shard-mb", type=int, default=256, help="shards: target size of one tar shard in MB (default 256)")
    s.add_argument("--out", required=True, help="output folder (data folder, or shard folder)")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help="train a stage: dino | cdino | pseudo | supervised")
    s.add_argument("--recipe", help="take the config from this recipe's --stage (base + the stage's "
                                    "overrides, as `cdino run` uses them); --config / --set apply on top")
    s.add_argument("--stage", choices=["dino", "cdino", "pseudo", "mm", "supervised"],
                   help="with --recipe: which stage of it to train (mm: the audio-visual rounds)")
    s.add_argument("--method", choices=["dino", "cdino", "pseudo", "supervised"],
                   help="dino, cdino (cluster-aware DINO), pseudo (DLG-LC rounds; needs --init) or "
                        "supervised (the labelled reference; needs utt2spk); required unless "
                        "--recipe/--stage name it")
    s.add_argument("--data", required=True, help="training data folder (wav.scp), or a shard folder (shards.list)")
    s.add_argument("--out", required=True, help="experiment folder")
    s.add_argument("--init", help="start from a model folder (pseudo: required; supervised: its encoder) or a DINO experiment")
    s.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    s.add_argument("--test-data", help="pseudo: evaluate each round on this data folder (reporting only)")
    s.add_argument("--test-trials", help="pseudo: trials for that evaluation")
    _add_config_args(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("embed", help="full-utterance embeddings of a data folder")
    s.add_argument("--model", required=True, help="model folder (EXP/model)")
    s.add_argument("--data", required=True, help="data folder (wav.scp) whose utterances to embed")
    s.add_argument("--out", required=True, help="output folder: embeddings.npy + utts.txt (resumable)")
    s.add_argument("--workers", type=int, default=2, metavar="N",
                   help="DataLoader workers reading audio ahead (0: two reader threads)")
    s.add_argument("--device", default="auto", help=device_help)
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("eval", help="EER and minDCF of a model on trials")
    s.add_argument("--model", required=True, help="model folder (EXP/model)")
    s.add_argument("--data", required=True, help="data folder (wav.scp) holding the trial utterances")
    s.add_argument("--trials", required=True,
                   help="trials file: 'enroll test target|nontarget' or '1|0 enroll test' lines")
    s.add_argument("--json", required=True, help="write EER and minDCF (fractions) to this JSON file")
    s.add_argument("--scores", help="also write 'enroll test score' lines to this file")
    s.add_argument("--plots", help="also write DET and score-histogram plots into this folder")
    s.add_argument("--asnorm", type=int, metavar="TOP_N", help="AS-norm with this cohort top-N")
    s.add_argument("--cohort", help="embedding folder of unlabelled training utterances for AS-norm")
    s.add_argument("--enroll", metavar="MAP",
                   help="enrolment map, 'enroll_id utt1 utt2 ...' lines: the trials then name "
                        "'enroll_id test_utt' and each enrolment is the mean of its utterances' "
                        "normalised embeddings")
    s.add_argument("--workers", type=int, default=2, metavar="N",
                   help="DataLoader workers reading audio ahead (0: two reader threads)")
    s.add_argument("--device", default="auto", help=device_help)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("verify", help="score two audio files and decide same/different speaker")
    s.add_argument("--model", required=True, help="model folder (EXP/model)")
    s.add_argument("--threshold", type=float,
                   help="decide on the cosine score at this threshold instead of the model's")
    s.add_argument("--prior", type=float,
                   help="calibrated models: decide llr >= -logit(PRIOR), PRIOR the probability of "
                        "'same' before listening (default 0.5, i.e. llr >= 0)")
    s.add_argument("--json", action="store_true",
                   help="print a JSON object (score, threshold, decision, llr, prior, warnings) "
                        "instead of the line")
    s.add_argument("--enroll", nargs="+", metavar="FILE",
                   help="several enrolment files of one speaker (with --test instead of two files): "
                        "scored as the mean of their normalised embeddings")
    s.add_argument("--test", metavar="FILE", help="the test file, with --enroll")
    s.add_argument("--device", default="auto", help=device_help)
    s.add_argument("files", nargs="*", metavar="FILE",
                   help="two audio files, a.wav b.wav (wav/flac/ogg/m4a; any rate, mixed down to mono)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("calibrate", help="fit the model's score calibration (cosine -> LLR) from "
                                         "labelled development trials, or without labels on your data")
    s.add_argument("--model", required=True, help="model folder (EXP/model); calibration.json is "
                                                  "written into it")
    s.add_argument("--data", required=True, help="data folder (wav.scp): the trial utterances, or (no "
                                                 "--trials) unlabelled recordings of the domain to calibrate for")
    s.add_argument("--trials",
                   help="labelled development trials: 'enroll test target|nontarget' or '1|0 enroll "
                        "test' lines (never the test list you report on); without: label-free, from "
                        "k-means pseudo labels of --data")
    s.add_argument("--clusters", type=int, default=0, metavar="K",
                   help="label-free: k-means clusters (default: one per 20 utterances, as every export)")
    s.add_argument("--recentre", action="store_true",
                   help="label-free: also replace the model's mean embedding by --data's")
    s.add_argument("--enroll", metavar="MAP", help="enrolment map, as for cdino eval --enroll")
    s.add_argument("--prior", type=float, default=0.5,
                   help="effective target prior the fit weights the trials with (default 0.5)")
    s.add_argument("--workers", type=int, default=2, metavar="N",
                   help="DataLoader workers reading audio ahead (0: two reader threads)")
    s.add_argument("--device", default="auto", help=device_help)
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("score", help="score unlabelled pairs: 'enroll test score decision' lines")
    s.add_argument("--model", required=True, help="model folder (EXP/model)")
    s.add_argument("--pairs", required=True,
                   help="pairs file, one 'enroll test' per line: audio paths (relative to the current "
                        "folder), or utterance ids of --data")
    s.add_argument("--out", required=True, help="write 'enroll test score same|different' lines here")
    s.add_argument("--data", help="data folder (wav.scp): the pairs name its utterance ids")
    s.add_argument("--threshold", type=float, help="decide at this score instead of the model's threshold")
    s.add_argument("--device", default="auto", help=device_help)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("select", help="choose among candidate models without labels (label-free criteria)")
    s.add_argument("candidates", nargs="+", metavar="MODEL", help="candidate model folders (two or more)")
    s.add_argument("--data", required=True, help="data folder of unlabelled recordings from your domain "
                                                 "(visual.npy + visual_utts.txt, if present, enable cross_view)")
    s.add_argument("--criterion", default="auto",
                   help="auto (cross_view with a second view, else cross_channel), cross_view, cross_channel, shared, split, own_clusters")
    s.add_argument("--json", metavar="OUT", help="write every criterion of every candidate here")
    s.add_argument("--max-utts", dest="max_utts", type=int, default=1600,
                   help="recordings used at most (with a second view: half of them random anchors, the rest their cross-view partners; default 1600)")
    s.add_argument("--device", default="auto", help=device_help)
    s.set_defaults(func=cmd_select)

    s = sub.add_parser("export", help="export the encoder to ONNX (fbank in, embedding out)")
    s.add_argument("--model", required=True, help="model folder (EXP/model)")
    s.add_argument("--onnx", required=True,
                   help="ONNX file to write (with the mean, threshold and fbank settings as metadata)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("import", help="make a model folder from another toolkit's released model",
                       description="Make a cdino model folder from another toolkit's released model. "
                                   "wespeaker: a WeSpeaker release folder (avg_model.pt + config.yaml) "
                                   "holding a ResNet18/34 or an ECAPA-TDNN; the folder embeds as "
                                   "WeSpeaker does, with mean.npy zero and the threshold unset "
                                   "(docs/wespeaker.md).")
    s.add_argument("toolkit", choices=["wespeaker"], help="which toolkit the model comes from")
    s.add_argument("source", metavar="DIR", help="the released model's folder")
    s.add_argument("--out", required=True, metavar="MODEL", help="model folder to write")
    s.set_defaults(func=cmd_import)
    return p


def main(argv: list[str] | None = None) -> int:
    from cdino.errors import CdinoError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CdinoError, OSError) as exc:  # OSError: unwritable output, disk full, ...
        message = _error_line(exc)
        print(f"error: {message}", file=sys.stderr)
        if args.func is cmd_verify and args.json:  # a program reading the JSON gets an answer too
            print(json.dumps(_error_object(message, [args.model, *args.files, *(args.enroll or []), args.test])))
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command with --resume (or rerun the recipe) to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
