"""The method's pipeline: the whole method on one corpus, stages in order, each skipped
when its outputs exist.

    corpus      simulated corpus (or the data folders a recipe names)
    baselines   untrained encoder, mean/std fbank cosine
    dino        stage 1
    cdino       cluster-aware DINO, continuing from dino
    choose      (only with ``choose``) settings of the rounds picked without labels: each
                candidate trains round 1 from cdino, the label-free criterion picks one value
                per key (keys in order, each from the previous keys' picks), and the pick's
                round 1 becomes pseudo's round 1
    pseudo      R rounds of audio DLG-LC from cdino            → pseudo_r1..R
    mm          R rounds of audio-visual DLG-LC from cdino     → mm_r1..R (same rounds and steps)
    ablations   one round each from cdino: gate off / fixed gate / DLG / DLG-LC, and
                audio-visual with another face proxy (audio_visual_weak)
    controls    equal-cost controls: DINO continued for C-DINO's epochs (dino_equal);
                the supervised reference at the whole pipeline's steps (supervised_full)
    supervised  the reference: true labels, same encoder, trainer and loss, DINO's steps
    report      results.json + report.md + plots; `final` copied to EXP/model/

Every stage is evaluated on the test trials after it trains, for reporting only: the
exported (``final``) stage is fixed by the recipe before anything runs, and nothing is
selected on test trials. A stage's outputs are ``EXP/<stage>/`` with a ``done.json``
marker written last; rerunning skips done stages; ``--from STAGE`` removes the markers
from that stage on; a killed stage resumes from its checkpoints.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from cdino.atomic import copy_folder, write_text
from cdino.config import from_dict, load_config, set_key, to_dict
from cdino.errors import ConfigError, DataError
from cdino.pipeline.recipe_source import merge_overrides, resolve_recipe
from cdino.pipeline.staged_run import StagedRun, print_finished

STAGES = ["corpus", "baselines", "dino", "cdino", "choose", "pseudo", "mm", "ablations", "controls", "supervised",
          "report"]
ABLATIONS = ["gate_off", "fixed_gate", "dlg", "dlg_lc", "audio_visual_weak"]
CONTROLS = ["dino_equal", "supervised_full"]
WEAK_VISUAL = "visual_weak"  # folder beside train/ and test/ in the corpus: the face proxy at weak_visual_noise


@dataclass
class CorpusSpec:
    """The simulated corpus a recipe generates (when `data` is not given)."""

    preset: str = "default"  # default | quick | tiny
    seed: int = 0  # corpus seed
    speakers: int | None = None  # override the preset's training speakers
    dev_speakers: int | None = None  # override the preset's labelled dev speakers (0: no dev split; train and test stay the same)
    visual_noise: float | None = None  # override the face proxy's difficulty (SynthConfig.visual_noise)
    weak_visual_noise: float | None = None  # also write the face proxy at this difficulty (corpus/visual_weak/), for the audio_visual_weak ablation


@dataclass
class DataSpec:
    """Existing data folders (instead of the simulated corpus)."""

    train: str | None = None  # training data folder (used without labels by the self-supervised stages)
    test: str | None = None  # test data folder
    trials: str | None = None  # trials file for the test folder
    valid: str | None = None  # a held-out part of the training data (label-free validation; see `validation`)
    dev: str | None = None  # a labelled development folder (with trials) to choose recipe settings on; default: the simulated corpus's dev/


@dataclass
class RecipeConfig:
    """A pipeline: stage configs are overrides of the training defaults (cdino.train.trainer.TrainConfig)."""

    name: str = "custom"  # shown in the report
    kind: str = "pipeline"  # the recipe form (cdino.pipeline.recipe_source.KINDS); "adapt" recipes are read by cdino.pipeline.adapt
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    data: DataSpec = field(default_factory=DataSpec)
    base: dict = field(default_factory=dict)  # overrides shared by every stage
    dino: dict = field(default_factory=dict)  # overrides of the DINO stage
    cdino: dict = field(default_factory=dict)  # overrides of the C-DINO stage
    pseudo: dict = field(default_factory=dict)  # overrides of the audio DLG-LC rounds
    mm: dict = field(default_factory=dict)  # overrides of the audio-visual rounds (on top of `pseudo`)
    multimodal: bool = True  # run the audio-visual rounds
    supervised: dict = field(default_factory=dict)  # overrides of the supervised reference
    run_supervised: bool = True  # train the supervised reference
    ablations: dict = field(default_factory=dict)  # name → overrides of a one-round run from cdino (gate_off, fixed_gate, dlg, dlg_lc, audio_visual_weak)
    controls: dict = field(default_factory=dict)  # equal-cost controls: dino_equal, supervised_full (name → overrides)
    seeds: list[int] = field(default_factory=list)  # a study: the pipeline once per training seed into EXP/seed{S}/
    choose: dict = field(default_factory=dict)  # settings of the rounds picked without labels before they run: override key of the pseudo stage → candidate values, e.g. {pseudo.kmeans.n_clusters: [200, 300]} (the `choose` stage; docs/selection.md)
    final: str = "mm_rR"  # the stage exported as EXP/model (fixed before the run; mm_rR / pseudo_rR = the last round, or with pseudo.stop: criterion the round kept), or "select": picked after the run by the label-free criterion (docs/selection.md)
    bootstrap: int = 1000  # bootstrap resamples for the EER confidence intervals
    evaluate_dev: bool = False  # also evaluate every stage on the labelled dev split (dev_eer ...): what recipe settings are chosen on, never the test trials
    validation: float = 0.0  # hold out this fraction of the training utterances from every stage and report each stage's label-free validation EER on them (cdino.eval.validation); 0: none

    def validate(self) -> None:
        if self.kind != "pipeline":
            raise ConfigError(f"kind: the method's pipeline reads recipes of kind 'pipeline', got '{self.kind}'")
        for key, values in self.choose.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"recipe key 'choose.{key}': a list of candidate values, got {values!r}")
            if key in ("pseudo.rounds", "pseudo.modality", "pseudo.stop"):
                raise ConfigError(f"recipe key 'choose.{key}': not chosen by candidates' round 1 "
                                  f"(the number of rounds: pseudo.stop: criterion)")
        if self.evaluate_dev and self.corpus.dev_speakers == 0 and not (self.data.train or self.data.dev):
            raise ConfigError("recipe key 'evaluate_dev': the corpus has no dev split (corpus.dev_speakers is 0); "
                              "set corpus.dev_speakers (e.g. 40) or data.dev")


def settings_overrides(settings: dict) -> dict:
    """``{"a.b": v, ...}`` (dotted keys, as ``choose`` names them) as nested overrides."""
    out: dict = {}
    for key, value in settings.items():
        out = set_key(out, key, value)
    return out


def load_recipe(source: str | Path, overrides=()) -> RecipeConfig:
    return load_config(RecipeConfig, resolve_recipe(source), overrides=list(overrides))


def stage_overrides(recipe: RecipeConfig, stage: str) -> dict:
    """A stage's overrides of the training defaults: ``base``, then ``pseudo`` for every
    pseudo-label stage, then ``mm`` for the audio-visual rounds, or the stage's own."""
    parts = [recipe.base]
    if stage in ("pseudo", "mm", "ablations"):
        parts.append(recipe.pseudo)
    if stage == "mm":
        parts.append(recipe.mm)
    if stage in ("dino", "cdino", "supervised"):
        parts.append(getattr(recipe, stage))
    return merge_overrides(*parts)


class MethodPipeline(StagedRun):
    """Runs a recipe into ``out``; see the module docstring."""

    stages = STAGES
    trained = ("dino", "cdino", "choose", "pseudo", "mm", "ablations", "controls", "supervised")

    def __init__(self, recipe: RecipeConfig, out: Path) -> None:
        super().__init__(recipe, out)
        self.rounds = self.train_config("pseudo").pseudo.rounds
        self._check_final()
        for key, values in self.r.choose.items():  # every candidate must make a valid config now, not after stage 1
            for v in values:
                self.train_config("pseudo", set_key({}, key, v), where=f"recipe key 'choose.{key}' value {v!r}")

    # ------------------------------------------------------------------ configs
    def train_config(self, stage: str, extra: dict | None = None, where: str | None = None):
        """A stage's training config; the rounds' stages take the ``choose`` stage's picks too."""
        from cdino.train.trainer import TrainConfig

        chosen = self.chosen() if stage in ("pseudo", "mm", "ablations") else {}
        return from_dict(TrainConfig, merge_overrides(stage_overrides(self.r, stage), chosen, extra or {}),
                         where=where or f"recipe stage '{stage}'")

    def chosen(self) -> dict:
        """The overrides the ``choose`` stage picked (``{}`` before it ran or without ``choose``)."""
        return self.stage_info("choose").get("overrides", {}) if self.r.choose else {}

    def _check_final(self) -> None:
        names = self.stage_names()
        if self.r.final not in names + ["select"]:
            raise ConfigError(f"recipe key 'final': '{self.r.final}' is not one of {', '.join(names)}, select")

    def stage_names(self) -> list[str]:
        names = ["dino", "cdino"] + [f"pseudo_r{i}" for i in range(1, self.rounds + 1)]
        if self.r.multimodal:
            names += [f"mm_r{i}" for i in range(1, self.rounds + 1)]
        names += ["pseudo_rR"] + (["mm_rR"] if self.r.multimodal else [])
        return names

    def resolve_final(self) -> str:
        """``final`` with ``rR`` resolved: the last round, or the round the stop rule kept."""
        if not self.r.final.endswith("_rR"):
            return self.r.final
        stage = self.r.final[: -len("_rR")]
        return self.stage_info(stage).get("kept") or f"{stage}_r{self.rounds}"

    # ------------------------------------------------------------------ data
    @property
    def source_train_dir(self) -> Path:
        """The training data as given (or generated), before any validation split."""
        return Path(self.r.data.train) if self.r.data.train else self.out / "corpus" / "train"

    @property
    def train_dir(self) -> Path:
        """What every stage trains on: the training data less the validation split."""
        return self.out / "split" / "train" if self.r.validation > 0 else self.source_train_dir

    @property
    def valid_dir(self) -> Path | None:
        """The held-out, label-free validation utterances, or ``None``."""
        if self.r.data.valid:
            return Path(self.r.data.valid)
        return self.out / "split" / "valid" if self.r.validation > 0 else None

    @property
    def dev_dir(self) -> Path | None:
        """The labelled development folder (speakers of neither train nor test), or ``None``."""
        if self.r.data.dev:
            return Path(self.r.data.dev)
        if self.r.data.train:
            return None
        return self.out / "corpus" / "dev"

    @property
    def criterion_dir(self) -> Path:
        """Unlabelled recordings the label-free choices score (``choose``, ``pseudo.stop``,
        ``final: select``): the held-out validation utterances where the recipe has them (no
        candidate trained on them), else the training recordings."""
        return self.valid_dir or self.train_dir

    @property
    def test_dir(self) -> Path:
        return Path(self.r.data.test) if self.r.data.test else self.out / "corpus" / "test"

    @property
    def trials(self) -> Path:
        return Path(self.r.data.trials) if self.r.data.trials else self.test_dir / "trials"

    # ------------------------------------------------------------------ stages
    def skip(self, stage: str) -> bool:
        return ((stage == "mm" and not self.r.multimodal)
                or (stage == "choose" and not self.r.choose)
                or (stage == "supervised" and not self.r.run_supervised)
                or (stage == "ablations" and not self.r.ablations)
                or (stage == "controls" and not self.r.controls))

    def run(self, from_stage: str | None = None) -> dict:
        """Run the stages in order. Under ``torchrun`` every rank runs every stage together:
        training, embedding for clustering and for evaluation are split over the ranks;
        only generating the corpus, k-means, scoring and writing the report are rank 0's."""
        from cdino.distributed import barrier, init_distributed, is_main, resolve_device

        init_distributed(resolve_device(self.train_config("dino").trainer.device))
        if self.r.seeds:
            return self._run_study(from_stage)
        if from_stage and is_main():
            self.reset_from(from_stage)
        barrier()
        t_start = time.perf_counter()
        self.run_stages()
        if not is_main():
            return {}
        results = json.loads((self.out / "results.json").read_text())
        total, now = results["seconds"]["total"], time.perf_counter() - t_start
        earlier = f" ({now:.0f} s in this run, the rest in earlier runs)" if total - now > 5 else ""
        print_finished("pipeline", self.out, total, earlier)
        return results

    def _run_study(self, from_stage: str | None) -> dict:
        """The pipeline once per training seed on one corpus, then the study report."""
        from dataclasses import replace

        from cdino.pipeline.study import print_study, summarize, write_study
        from cdino.distributed import barrier, is_main

        if from_stage == "corpus" and is_main():
            self.reset_from("corpus")
        if not self.done("corpus"):
            if is_main():
                self.study_corpus()
            barrier()
        t_start = time.perf_counter()
        valid = self.valid_dir
        dev = self.dev_dir
        data = DataSpec(train=str(self.train_dir), test=str(self.test_dir), trials=str(self.trials),
                        valid=str(valid) if valid else None,
                        dev=str(dev) if dev is not None and dev.is_dir() else None)
        for seed in self.r.seeds:
            if is_main():
                print(f"[seed {seed}] running the pipeline into {self.out / f'seed{seed}'}", flush=True)
            child = replace(self.r, seeds=[], name=f"{self.r.name}, seed {seed}", data=data, validation=0.0,
                            base=merge_overrides(self.r.base, {"trainer": {"seed": int(seed)}}))
            MethodPipeline(child, self.out / f"seed{seed}").run(None if from_stage == "corpus" else from_stage)
        if not is_main():
            return {}
        summary = summarize(self.out, list(self.r.seeds), n_boot=self.r.bootstrap)
        summary["seconds"] = {"corpus": float(self.stage_info("corpus").get("seconds", 0.0)),
                              "seeds": time.perf_counter() - t_start}
        summary["seconds"]["total"] = summary["seconds"]["corpus"] + summary["seconds"]["seeds"]
        write_study(self.out, list(self.r.seeds), summary, self.out / "results.json", self.out / "report.md")
        print_study(summary)
        print(f"study finished: {summary['seconds']['total']:.0f} s; see {self.out / 'report.md'}")
        return summary

    def study_corpus(self) -> None:
        """The study's shared corpus, made once: separate study processes on this folder (one
        per seed, ``--set seeds=[S]``) take a lock, and the ones that wait find it done."""
        from cdino.lock import exclusive

        with exclusive(self.out / "corpus.lock"):
            if not self.done("corpus"):
                print("[corpus] running", flush=True)
                t0 = time.perf_counter()
                info = self.stage_corpus()
                self.mark("corpus", {**info, "seconds": time.perf_counter() - t0})

    def evaluate(self, model_dir: Path, name: str) -> dict:
        """Test-trial EER/minDCF of a stage's model (reporting only). Called on every rank:
        the ranks embed the test utterances together on their devices; rank 0 scores and
        returns the result, the others ``{}``."""
        from cdino.verbs import run_eval
        from cdino.distributed import is_main, resolve_device

        cfg = self.train_config("dino")
        edir = self.out / "eval" / name
        if is_main():
            edir.mkdir(parents=True, exist_ok=True)
        device = str(resolve_device(cfg.trainer.device))
        res = dict(run_eval(model_dir, self.test_dir, self.trials, edir / "eval.json",
                            scores_out=edir / "scores.txt", progress=False, label=name,
                            device=device, distributed=True, optimize="fp32",
                            num_workers=cfg.data.num_workers))
        dev = self.dev_dir
        if self.r.evaluate_dev and dev is not None and (dev / "trials").is_file():
            got = run_eval(model_dir, dev, dev / "trials", edir / "dev.json", scores_out=edir / "dev_scores.txt",
                           progress=False, label=f"{name} dev", device=device, distributed=True, optimize="fp32",
                           num_workers=cfg.data.num_workers)
            res.update({f"dev_{k}": got[k] for k in ("eer", "mindcf_0.01", "mindcf_0.05")} if got else {})
        if self.valid_dir is not None:  # label-free: pseudo-label trials of held-out training utterances
            from cdino.eval.validation import validation_eer

            res.update(validation_eer(model_dir, self.valid_dir, device=device, distributed=True,
                                      num_workers=cfg.data.num_workers))
            if is_main() and res.get("valid_eer") is not None:
                print(f"[{name}] validation EER {100 * res['valid_eer']:.2f} % (label-free, "
                      f"{res['valid_utts']} held-out training utterances)", flush=True)
        return res

    def stage_corpus(self) -> dict:
        info = self._make_corpus()
        if self.r.validation > 0:
            info["validation"] = self._split_validation()
        return info

    def _split_validation(self) -> dict:
        """``EXP/split/{train,valid}`` (and the weak face proxy's training rows, if any)."""
        from cdino.eval.validation import split_data_dir, subset_visual

        shutil.rmtree(self.out / "split", ignore_errors=True)
        train, valid = split_data_dir(self.source_train_dir, self.out / "split", self.r.validation)
        weak = self.source_train_dir.parent / WEAK_VISUAL
        if (weak / "train").is_dir():
            from cdino.data.kaldi_dir import DataDir

            subset_visual(weak / "train", self.weak_visual_dir / "train", DataDir.load(train).utts)
            shutil.copytree(weak / "test", self.weak_visual_dir / "test")
        n = {name: len((d / "wav.scp").read_text().splitlines()) for name, d in (("train", train), ("valid", valid))}
        return {"fraction": self.r.validation, "train_utts": n["train"], "valid_utts": n["valid"]}

    def _make_corpus(self) -> dict:
        if self.r.data.train:
            for p in (self.source_train_dir, self.test_dir, self.trials):
                if not Path(p).exists():
                    raise DataError(f"recipe data: {p} does not exist")
            return {"source": "data folders"}
        from cdino.corpus.synth import SynthConfig, synthesize

        over = {"seed": self.r.corpus.seed}
        if self.r.corpus.speakers:
            over["n_train_speakers"] = self.r.corpus.speakers
        if self.r.corpus.dev_speakers is not None:
            over["n_dev_speakers"] = self.r.corpus.dev_speakers
        if self.r.corpus.visual_noise is not None:
            over["visual_noise"] = self.r.corpus.visual_noise
        cfg = SynthConfig.preset(self.r.corpus.preset, **over)
        target = self.out / "corpus"
        shutil.rmtree(target, ignore_errors=True)
        summary = synthesize(target, cfg, progress=True)
        if self.r.corpus.weak_visual_noise is not None:
            from cdino.corpus.synth import write_visual_view

            write_visual_view(target, target / WEAK_VISUAL, self.r.corpus.weak_visual_noise)
            summary["weak_visual_noise"] = self.r.corpus.weak_visual_noise
        return {"summary": summary}

    @property
    def weak_visual_dir(self) -> Path:
        """The weak face proxy beside the training and test folders (see ``weak_visual_noise``)."""
        return self.train_dir.parent / WEAK_VISUAL

    def stage_baselines(self) -> dict:
        from cdino.eval.baselines import fbank_stats_baseline, visual_only_baseline
        from cdino.train.stages import untrained_model
        from cdino.distributed import is_main

        cfg = self.train_config("dino")
        t0 = time.perf_counter()
        model = untrained_model(cfg, self.train_dir, self.out / "baselines" / "untrained")
        res = {"untrained": {**self.evaluate(model, "untrained"), "seconds": time.perf_counter() - t0}}
        if is_main():  # a few seconds of fbank statistics: not worth splitting
            t0 = time.perf_counter()
            res["fbank_stats"] = fbank_stats_baseline(cfg.fbank, self.train_dir, self.test_dir, self.trials,
                                                      self.out / "eval" / "fbank_stats")
            res["fbank_stats"]["seconds"] = time.perf_counter() - t0
            # The strength of the second view alone (face proxy), which bounds the audio-visual gain.
            views = {"visual_only": None, "visual_only_weak": self.weak_visual_dir / "test"}
            for name, where in views.items():
                if where is None or where.is_dir():
                    t0 = time.perf_counter()
                    got = visual_only_baseline(self.test_dir, self.trials, where)
                    if got:
                        res[name] = {**got, "seconds": time.perf_counter() - t0}
        return res

    def _train_stage1(self, method: str, extra: dict | None = None, config_stage: str | None = None,
                      out: Path | None = None, name: str | None = None) -> dict:
        from cdino.eval.model_folder import read_model_info
        from cdino.train.stages import model_complete, train_dino

        cfg = self.train_config(config_stage or method, extra)
        out = out or self.out / method
        t0 = time.perf_counter()
        resume = (out / "checkpoints").is_dir()
        if not model_complete(out / "model"):
            train_dino(cfg, self.train_dir, out, method=method, resume=resume)
        res = self.evaluate(out / "model", name or method)
        res["seconds"] = time.perf_counter() - t0
        res["history"] = read_model_info(out / "model").get("history", [])
        return res

    def stage_dino(self) -> dict:
        return self._train_stage1("dino")

    def stage_cdino(self) -> dict:
        return self._train_stage1("cdino", {"dino": {"init": str(self.out / "dino")}})

    def _rounds(self, stage: str, extra: dict | None = None, out: Path | None = None,
                prefix: str | None = None, last_round: int | None = None) -> dict:
        from cdino.train.stages import round_diagnostics, train_pseudo_rounds

        cfg = self.train_config("mm" if stage == "mm" else "pseudo", extra)
        out = out or self.out / stage
        prefix = prefix or stage
        results = {}

        def on_round(r, model_dir, summary):
            results[f"{prefix}_r{r}"] = {**self.evaluate(model_dir, f"{prefix}_r{r}"),
                                         "seconds": summary["seconds"], **round_diagnostics(summary)}

        summaries = train_pseudo_rounds(cfg, self.train_dir, self.out / "cdino" / "model", out,
                                        resume=True, on_round=on_round, last_round=last_round,
                                        criterion_data=self.criterion_dir)
        for s in summaries:  # rounds finished by an earlier run
            name = f"{prefix}_r{s['round']}"
            if name not in results:
                results[name] = {**self.evaluate(out / f"round{s['round']}" / "model", name),
                                 "seconds": s["seconds"], **round_diagnostics(s)}
            if "stop" in s:
                results[name]["stop"] = s["stop"]
        got = {"rounds": results}
        stop = summaries[-1].get("stop") if summaries else None
        if stop and stop["stop"]:
            got["kept"] = f"{prefix}_r{stop['best']}"
        return got

    def stage_choose(self) -> dict:
        """``choose``: for each key in order, round 1 from cdino with every candidate value
        (the earlier keys at their picks), scored together by the label-free criterion on
        :attr:`criterion_dir`'s recordings; the lowest is picked. Candidates are evaluated on the test
        (and dev) trials for the report only. The final pick's round 1 is pseudo's round 1
        (the same config and seed: it would train the same)."""
        from cdino.distributed import barrier, is_main

        folder = self.out / "choose"
        picks: dict = {}
        runs: dict[str, dict] = {}  # a candidate's whole training config → {"name", "model", "result"}: each config trains once
        keys = []

        def config_of(settings: dict) -> tuple[dict, str]:
            over = merge_overrides(settings_overrides(settings), {"pseudo": {"modality": "audio"}})
            return over, json.dumps(to_dict(self.train_config("pseudo", over)), sort_keys=True, default=str)

        for key, values in self.r.choose.items():
            candidates = {}
            for v in values:
                settings = {**picks, key: v}
                over, sig = config_of(settings)
                if sig not in runs:
                    name = "+".join(f"{k}={x}" for k, x in settings.items())
                    got = self._rounds("pseudo", over, out=folder / name, prefix=name, last_round=1)
                    runs[sig] = {"name": name, "model": folder / name / "round1" / "model",
                                 "result": got["rounds"][f"{name}_r1"]}
                candidates[json.dumps(v, default=str)] = runs[sig]
            record = folder / f"{key}.json"
            if is_main() and not record.is_file():
                got = self._label_free_pick({c: run["model"] for c, run in candidates.items()})
                write_text(record, json.dumps({"key": key, **got, "pick": json.loads(got["pick"])}, indent=1))
                print(f"[choose] {key}: {json.loads(got['pick'])!r}, picked without labels by {got['criterion']} "
                      f"on {got['recordings']} recordings of {got['data']}", flush=True)
            barrier()
            decision = json.loads(record.read_text())
            decision["candidates"] = {c: {**run["result"], "folder": run["name"]} for c, run in candidates.items()}
            picks[key] = decision["pick"]
            keys.append(decision)
        final = runs[config_of(picks)[1]]
        if is_main() and not (self.out / "pseudo" / "round1" / "summary.json").is_file():
            shutil.rmtree(self.out / "pseudo", ignore_errors=True)  # rounds of other settings, if any
            copy_folder(final["model"].parent, self.out / "pseudo" / "round1")
        barrier()
        return {"keys": keys, "picks": picks,
                "overrides": settings_overrides(picks)}

    def stage_pseudo(self) -> dict:
        return self._rounds("pseudo", {"pseudo": {"modality": "audio"}})

    def stage_mm(self) -> dict:
        return self._rounds("mm", {"pseudo": {"modality": "audio_visual"}})

    def stage_ablations(self) -> dict:
        res = {}
        pseudo_r1 = self.stage_info("pseudo").get("rounds", {}).get("pseudo_r1")
        for name, over in self.r.ablations.items():
            if name not in ABLATIONS:
                raise ConfigError(f"recipe key 'ablations.{name}': unknown ablation (known: {', '.join(ABLATIONS)})")
            if not over and pseudo_r1 is not None and name != "audio_visual_weak":
                # No override: the ablation is the main audio round 1 itself (same config and
                # seed, so a rerun would reproduce it exactly); reuse it instead of retraining.
                res[name] = {**pseudo_r1, "same_run_as": "pseudo_r1"}
                continue
            arm = {"rounds": 1, "modality": "audio"}
            if name == "audio_visual_weak":  # the audio-visual round with the weaker face proxy
                if not (self.weak_visual_dir / "train").is_dir():
                    raise ConfigError(f"recipe key 'ablations.{name}': needs corpus.weak_visual_noise "
                                      f"(no {self.weak_visual_dir / 'train'})")
                arm = {"rounds": 1, "modality": "audio_visual", "visual": str(self.weak_visual_dir / "train")}
                over = merge_overrides(self.r.mm, over)
            got = self._rounds("ablations", merge_overrides({"pseudo": arm}, over), out=self.out / "ablations" / name,
                               prefix=name)
            res[name] = got["rounds"][f"{name}_r1"]
        return res

    def stage_controls(self) -> dict:
        """Equal-cost controls: ``dino_equal`` trains DINO on for C-DINO's epochs with
        C-DINO's schedule (only the cluster-aware positives differ); ``supervised_full``
        trains the supervised reference for as many steps as DINO + C-DINO + every round."""
        from cdino.eval.model_folder import read_model_info
        from cdino.train.stages import model_complete, train_supervised

        res = {}
        for name, over in self.r.controls.items():
            if name not in CONTROLS:
                raise ConfigError(f"recipe key 'controls.{name}': unknown control (known: {', '.join(CONTROLS)})")
            out = self.out / "controls" / name
            if name == "dino_equal":
                res[name] = self._train_stage1("dino", merge_overrides({"dino": {"init": str(self.out / "dino")}}, over or {}),
                                               config_stage="cdino", out=out, name=name)
                res[name]["steps"] = read_model_info(out / "model").get("steps")
                continue
            rounds = len(self.stage_info("pseudo").get("rounds", {})) or self.rounds  # as trained (pseudo.stop may end them early)
            epochs = (self.train_config("dino").trainer.epochs + self.train_config("cdino").trainer.epochs
                      + rounds * self.train_config("pseudo").trainer.epochs)
            cfg = self.train_config("supervised", merge_overrides({"trainer": {"epochs": epochs}}, over or {}))
            t0 = time.perf_counter()
            if not model_complete(out / "model"):
                train_supervised(cfg, self.train_dir, out, resume=(out / "checkpoints").is_dir())
            res[name] = {**self.evaluate(out / "model", name), "seconds": time.perf_counter() - t0,
                         "steps": read_model_info(out / "model").get("steps"), "epochs": epochs}
        return res

    def stage_supervised(self) -> dict:
        from cdino.eval.model_folder import read_model_info
        from cdino.train.stages import model_complete, train_supervised

        cfg = self.train_config("supervised")
        out = self.out / "supervised"
        t0 = time.perf_counter()
        if not model_complete(out / "model"):
            train_supervised(cfg, self.train_dir, out, resume=(out / "checkpoints").is_dir())
        res = self.evaluate(out / "model", "supervised")
        res["seconds"] = time.perf_counter() - t0
        res["steps"] = read_model_info(out / "model").get("steps")
        return res

    def stage_report(self) -> dict:
        from cdino.pipeline.report import write_report

        self.report_started = time.perf_counter()
        self.selection = None
        if self.r.final == "select":
            self.selection = self._select_final()
            final = self.selection["pick"]
        else:
            final = self.resolve_final()
        if not (self._model_dir_of(final) / "config.yaml").is_file():
            raise ConfigError(f"recipe key 'final': {final} was not trained (the stop rule ended its rounds "
                              f"earlier: {self._model_dir_of(final).parent.parent / 'round*' / 'stop.json'}); "
                              "use pseudo_rR / mm_rR or select")
        write_report(self, final)
        copy_folder(self._model_dir_of(final), self.out / "model")
        return {"final": final, "results": str(self.out / "results.json")}

    def _select_final(self) -> dict:
        """``final: select``: the stage shipped is the trained stage with the lowest label-free
        criterion (cdino.eval.selection: ``cross_view`` where the training data has a second
        view, else ``cross_channel``) on up to 1600 recordings of :attr:`criterion_dir`; no label is read."""
        names = [n for n in self.stage_names() if not n.endswith("_rR")]
        candidates = {n: self._model_dir_of(n) for n in names if (self._model_dir_of(n) / "config.yaml").is_file()}
        got = self._label_free_pick(candidates)
        print(f"[report] final: {got['pick']}, picked without labels by {got['criterion']} on {got['recordings']} "
              f"recordings of {got['data']}", flush=True)
        return got

    def _label_free_pick(self, candidates: dict) -> dict:
        """The candidate model folders (``{name: path}``) scored on :attr:`criterion_dir`'s
        recordings by every criterion, and the pick (:func:`cdino.eval.selection.pick_candidate`):
        ``{"criterion", "pick", "recordings", "data", "values"}``. Rank 0's work."""
        from cdino.distributed import resolve_device
        from cdino.eval.selection import pick_candidate, score_candidates

        device = str(resolve_device(self.train_config("dino").trainer.device))
        values, utts, _ = score_candidates(candidates, self.criterion_dir, device=device)
        criterion, pick = pick_candidate(values)
        return {"criterion": criterion, "pick": pick, "recordings": len(utts), "data": str(self.criterion_dir),
                "values": values}

    def _model_dir_of(self, name: str) -> Path:
        if name in ("dino", "cdino", "supervised"):
            return self.out / name / "model"
        stage, r = name.rsplit("_r", 1)
        return self.out / stage / f"round{r}" / "model"



TRAIN_STAGES = {"dino": "dino", "cdino": "cdino", "pseudo": "pseudo", "mm": "pseudo", "supervised": "supervised"}


def stage_train_config(source, stage: str, overrides=(), extra: dict | None = None):
    """The training config one stage of a recipe runs with (its ``base`` + the stage's
    overrides, as ``cdino run`` uses them), for ``cdino train --recipe R --stage S``;
    ``extra`` (a ``--config`` file's overrides) and then ``overrides`` (``KEY=VALUE``) apply
    on top. Returns ``(TrainConfig, method)``."""
    if stage not in TRAIN_STAGES:
        raise ConfigError(f"--stage: '{stage}' is not a training stage ({', '.join(TRAIN_STAGES)})")
    from cdino.config import apply_overrides
    from cdino.train.trainer import TrainConfig

    modality = {"mm": "audio_visual", "pseudo": "audio"}.get(stage)
    merged = merge_overrides(stage_overrides(load_recipe(source), stage),
                    {"pseudo": {"modality": modality}} if modality else {}, extra or {})
    merged = apply_overrides(merged, list(overrides))
    return from_dict(TrainConfig, merged, where=f"recipe {source} stage '{stage}'"), TRAIN_STAGES[stage]
