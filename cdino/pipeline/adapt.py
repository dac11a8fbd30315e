"""Domain adaptation as a recipe: a speaker model from one domain adapted to another
without target labels, by pseudo-label rounds with DLG-LC on the unlabelled target data.

    corpus    the simulated corpora the recipe names (source: the English default domain,
              target: a second domain such as ``telephone``), or checks the data folders
    source    the model to adapt: an existing model folder, or supervised training on the
              labelled source data (true labels, as ``cdino train --method supervised``)
    adapt     the source model aligned to the target without labels (target BatchNorm
              statistics, mean and calibration: cdino.train.domain), then R rounds of extract →
              k-means → AAM + DLG-LC training on the target training folder from it; its
              labels are never read
    select    the model shipped: the aligned model or a round, whichever the label-free
              criterion on the target's training recordings prefers (the stop rule,
              cdino.eval.selection), or the last round (``ship: last``)
    oracle    supervised training on the target's true labels from the source model, for as
              many steps as the adaptation took (the upper reference); skipped when the
              target has no utt2spk
    report    results.json + report.md; the adapted model copied to EXP/model/

Every model is evaluated after it trains, for reporting only: the source model, the
adapted model (each round) and the oracle on the target test trials; the source model
(*before*) and the adapted model (*after*) on the source test trials, which shows how
much of the source domain the adaptation forgets. The adapted model reported and
exported is the last round, fixed before anything runs. Target labels serve the oracle
and diagnostics (clustering NMI / purity of the rounds) only.

Stages are skipped when their ``EXP/<stage>/done.json`` exists (written last,
atomically); ``--from STAGE`` redoes from a stage on; a killed training stage resumes
from its checkpoints. Under ``torchrun`` every rank runs every stage together (training,
embedding for clustering and for evaluation are split over the ranks); generating the
corpus, k-means, scoring and the report are rank 0's, as in :mod:`cdino.pipeline.method`.

With ``joint: true`` the labelled source training data joins every round with its true
labels (``pseudo.labelled``): its speakers are classes beside the target's clusters, never
gated or corrected, each batch holds about half of each, and a round has the steps of the
target data alone (so the oracle's budget is unchanged).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from cdino.atomic import copy_folder, write_text
from cdino.config import from_dict, load_config, to_dict
from cdino.errors import ConfigError, DataError
from cdino.pipeline.recipe_source import merge_overrides, resolve_recipe
from cdino.pipeline.staged_run import StagedRun

ADAPT_STAGES = ["corpus", "source", "adapt", "select", "oracle", "report"]
TRAIN_STAGES = ("source", "adapt", "oracle")


@dataclass
class SimulatedCorpus:
    """A simulated corpus (cdino.corpus.synth), used when a domain names no data folders."""

    preset: str = "default"  # default | quick | tiny (SynthConfig.preset)
    domain: str = "default"  # default | telephone (cdino.corpus.synth.DOMAINS; sets its channel mix)
    seed: int = 0  # corpus seed
    fields: dict = field(default_factory=dict)  # further SynthConfig fields (n_train_speakers, n_trials ...), strictly checked


@dataclass
class SourceSpec:
    """The source domain: the model to adapt, or the labelled data it is trained on."""

    model: str | None = None  # an existing model folder to adapt (then nothing is trained on the source)
    train: str | None = None  # labelled source training folder (utt2spk) for the supervised source model (with model and joint: true, the labelled data joining the rounds)
    test: str | None = None  # source test folder, for the before/after check (none: the check is skipped)
    trials: str | None = None  # its trials (default: TEST/trials)
    corpus: SimulatedCorpus = field(default_factory=SimulatedCorpus)  # simulated source data when neither model nor train is given


@dataclass
class TargetSpec:
    """The target domain: unlabelled training audio and labelled test trials."""

    train: str | None = None  # target training folder; adaptation reads its audio only (utt2spk, if any: oracle and diagnostics)
    test: str | None = None  # target test folder (required with train)
    trials: str | None = None  # its trials (default: TEST/trials)
    corpus: SimulatedCorpus = field(default_factory=lambda: SimulatedCorpus(domain="telephone"))  # simulated target data when train is not given


@dataclass
class AdaptGoals:
    """What the adaptation should achieve (reported as met / missed, never tuned on)."""

    gap_closed: float = 0.5  # adapted closes at least this fraction of the source → oracle target-EER gap
    max_source_loss: float = 0.10  # adapted loses at most this relative source-domain EER
    max_actdcf: float = 1.0  # the adapted model's label-free calibration: actDCF(0.01) on the target at most this ...
    max_cllr_ratio: float = 1.2  # ... and Cllr at most this multiple of min Cllr


@dataclass
class AdaptRecipeConfig:
    """An adaptation recipe; stage configs are overrides of cdino.train.trainer.TrainConfig."""

    name: str = "adaptation"  # shown in the report
    kind: str = "adapt"  # marks the recipe form for `cdino run`; must be "adapt"
    source: SourceSpec = field(default_factory=SourceSpec)
    target: TargetSpec = field(default_factory=TargetSpec)
    base: dict = field(default_factory=dict)  # overrides shared by every stage
    supervised: dict = field(default_factory=dict)  # overrides of the supervised source model (stage source)
    adapt: dict = field(default_factory=dict)  # overrides of the DLG-LC rounds on the target (pseudo.rounds, kmeans ...)
    oracle: dict = field(default_factory=dict)  # overrides of the oracle; its epochs, steps per epoch and global batch are the adaptation's
    run_oracle: bool = True  # train the oracle (needs the target's utt2spk)
    joint: bool = False  # the labelled source training data joins every round with its true labels (pseudo.labelled: its speakers as classes beside the target's clusters, never gated or corrected; each batch about half source), so the source domain is not forgotten; needs source.train or the simulated source
    align: bool = True  # before the rounds, align the source model to the target without labels: target BatchNorm statistics, mean and calibration (cdino.train.domain)
    oracle_from_source: bool = True  # the oracle fine-tunes the source model (True) or trains from scratch
    asnorm_top_n: int = 0  # > 0: the shipped model is also scored on the target trials with AS-norm of this top-N against a cohort of the target's training recordings (up to 2000, unlabelled, a seeded sample): a label-free step of its own, reported as "(b+)"
    ship: str = "select"  # the model exported: "select" = the aligned model or a round, picked by the label-free criterion on the target recordings (cdino.eval.selection; the stop rule); "last" = the last round
    goals: AdaptGoals = field(default_factory=AdaptGoals)
    bootstrap: int = 500  # bootstrap resamples for the EER confidence intervals

    def validate(self) -> None:
        if self.kind != "adapt":
            raise ConfigError(f"kind: an adaptation recipe has kind 'adapt', got '{self.kind}'")
        if self.target.train and not self.target.test:
            raise ConfigError("target.test: a target training folder needs a target test folder "
                              "(the adaptation is judged on its trials)")
        if self.source.model and self.source.train and not self.joint:
            raise ConfigError("source: give source.model (a model to adapt) or source.train "
                              "(labelled data to train one on), not both (both only with joint: true, "
                              "where source.train joins the rounds)")
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap: must be >= 0, got {self.bootstrap}")
        if self.asnorm_top_n < 0:
            raise ConfigError(f"asnorm_top_n: must be >= 0 (0: off), got {self.asnorm_top_n}")
        if self.ship not in ("select", "last"):
            raise ConfigError(f"ship: 'select' or 'last', got '{self.ship}'")


def load_adapt_recipe(source: str | Path, overrides=()) -> AdaptRecipeConfig:
    """Read an adaptation recipe strictly: an unknown key raises ConfigError naming it."""
    return load_config(AdaptRecipeConfig, resolve_recipe(source), overrides=list(overrides))


class AdaptPipeline(StagedRun):
    """Runs an adaptation recipe into ``out``; see the module docstring."""

    stages = ADAPT_STAGES
    trained = TRAIN_STAGES

    def __init__(self, recipe: AdaptRecipeConfig, out: Path) -> None:
        super().__init__(recipe, out)
        if self.r.source.model:
            from cdino.eval.model_folder import read_model_config

            read_model_config(self.r.source.model)  # fail now, not after the corpus
        for side, simulated, spec in (("source", self.source_simulated, self.r.source.corpus),
                                      ("target", self.target_simulated, self.r.target.corpus)):
            if simulated:
                _synth_config(spec, side)
        for stage in TRAIN_STAGES:  # every stage's config checked before anything runs
            self.train_config(stage)
        self.rounds = self.train_config("adapt").pseudo.rounds

    # ------------------------------------------------------------------ configs
    def _architecture(self) -> dict:
        """Encoder and fbank of the source model: what the adaptation and the oracle must
        build to start from it (the model folder's when given, else the source stage's)."""
        if self.r.source.model:
            from cdino.eval.model_folder import read_model_config

            cfg = read_model_config(self.r.source.model)
            return {"encoder": to_dict(cfg.encoder), "fbank": to_dict(cfg.fbank)}
        src = self.train_config("source")
        return {"encoder": to_dict(src.encoder), "fbank": to_dict(src.fbank)}

    def train_config(self, stage: str):
        """The TrainConfig of a training stage: ``base`` + the stage's overrides; the
        adaptation and oracle get the source model's encoder and fbank, and the oracle the
        adaptation's step budget (rounds × epochs at its batch and steps per epoch)."""
        from cdino.train.trainer import TrainConfig

        where = f"adaptation recipe stage '{stage}'"
        if stage == "source":
            return from_dict(TrainConfig, merge_overrides(self.r.base, self.r.supervised), where=where)
        joint = {}
        if self.r.joint:
            labelled = self.source_data()[0]
            if labelled is None:
                raise ConfigError("joint: needs labelled source data (source.train, or the simulated source corpus); "
                                  "source.model alone has none")
            joint = {"pseudo": {"labelled": str(labelled)}}
        adapt = from_dict(TrainConfig, merge_overrides(self.r.base, self.r.adapt, self._architecture(), joint),
                          where="adaptation recipe stage 'adapt'")
        if stage == "adapt":
            return adapt
        budget = {"trainer": {"epochs": adapt.pseudo.rounds * adapt.trainer.epochs + adapt.pseudo.large_margin_epochs,
                              "steps_per_epoch": adapt.trainer.steps_per_epoch,
                              "global_batch": adapt.trainer.global_batch}}
        return from_dict(TrainConfig, merge_overrides(self.r.base, self.r.oracle, self._architecture(), budget), where=where)

    # ------------------------------------------------------------------ data
    def _corpus_dir(self, side: str) -> Path:
        return self.out / "corpus" / side

    @property
    def source_simulated(self) -> bool:
        return not (self.r.source.model or self.r.source.train)

    @property
    def target_simulated(self) -> bool:
        return not self.r.target.train

    def source_data(self) -> tuple[Path | None, Path | None, Path | None]:
        """Source (train, test, trials); ``None`` where the recipe has none."""
        s = self.r.source
        if self.source_simulated:
            root = self._corpus_dir("source")
            return root / "train", root / "test", root / "test" / "trials"
        test = Path(s.test) if s.test else None
        trials = Path(s.trials) if s.trials else (test / "trials" if test else None)
        return (Path(s.train) if s.train else None), test, trials

    def target_data(self) -> tuple[Path, Path, Path]:
        t = self.r.target
        if self.target_simulated:
            root = self._corpus_dir("target")
            return root / "train", root / "test", root / "test" / "trials"
        return Path(t.train), Path(t.test), Path(t.trials) if t.trials else Path(t.test) / "trials"

    @property
    def source_model_dir(self) -> Path:
        return Path(self.r.source.model) if self.r.source.model else self.out / "source" / "model"

    @property
    def adapted_model_dir(self) -> Path:
        """The model the adaptation ships (the stop rule's pick, or the last round)."""
        model = self.stage_info("select").get("model")
        return Path(model) if model else self.out / "adapt" / f"round{self.rounds}" / "model"

    def target_has_labels(self) -> bool:
        return (self.target_data()[0] / "utt2spk").is_file()

    # ------------------------------------------------------------------ stages

    def run(self, from_stage: str | None = None) -> dict:
        """Run the stages in order (every rank runs every stage under ``torchrun``)."""
        from cdino.distributed import barrier, init_distributed, is_main, resolve_device

        init_distributed(resolve_device(self.train_config("adapt").trainer.device))
        if from_stage and is_main():
            self.reset_from(from_stage)
        barrier()
        self.started = time.perf_counter()
        self.run_stages()
        if not is_main():
            return {}
        return json.loads((self.out / "results.json").read_text())

    def evaluate(self, model_dir: Path, test: Path, trials: Path, name: str, **scoring) -> dict:
        """EER / minDCF of a model on a test folder (reporting only; ``scoring``: AS-norm
        settings of :func:`cdino.verbs.run_eval`). Called on every rank: the ranks embed
        together; rank 0 scores and returns the result, the others ``{}``."""
        from cdino.verbs import run_eval
        from cdino.distributed import is_main, resolve_device

        cfg = self.train_config("adapt")
        edir = self.out / "eval" / name
        if is_main():
            edir.mkdir(parents=True, exist_ok=True)
        return dict(run_eval(model_dir, test, trials, edir / "eval.json", scores_out=edir / "scores.txt",
                             progress=False, label=name, device=str(resolve_device(cfg.trainer.device)),
                             distributed=True, optimize="fp32", num_workers=cfg.data.num_workers, **scoring))

    def _on_target(self, model_dir: Path, name: str, **scoring) -> dict:
        _, test, trials = self.target_data()
        return self.evaluate(model_dir, test, trials, f"target/{name}", **scoring)

    def _target_cohort(self, model_dir: Path, out: Path, size: int = 2000) -> tuple[Path, int]:
        """The AS-norm cohort: ``model_dir``'s embeddings of up to ``size`` of the target's
        training recordings (a seeded sample; no label read), written to ``out``."""
        import numpy as np

        from cdino.api import load_model
        from cdino.data.kaldi_dir import DataDir
        from cdino.distributed import resolve_device
        from cdino.eval.embed import extract_embeddings

        data = DataDir.load(self.target_data()[0])
        utts = list(data.utts)
        if len(utts) > size:
            utts = [utts[i] for i in np.sort(np.random.default_rng(0).choice(len(utts), size, replace=False))]
        model = load_model(model_dir, device=str(resolve_device(self.train_config("adapt").trainer.device)),
                           optimize="fp32")
        extract_embeddings(model.encoder, model.fbank, data, out_dir=out, device=model.device, utts=utts,
                           progress=False, distributed=True, skip_bad=True, desc="AS-norm cohort")
        return out, len(utts)

    def _on_source(self, model_dir: Path, name: str) -> dict | None:
        _, test, trials = self.source_data()
        if test is None:
            return None
        return self.evaluate(model_dir, test, trials, f"source_domain/{name}")

    def stage_corpus(self) -> dict:
        info: dict = {}
        for side, simulated, spec, paths in (
                ("source", self.source_simulated, self.r.source.corpus, self.source_data()),
                ("target", self.target_simulated, self.r.target.corpus, self.target_data())):
            if simulated:
                info[side] = {"summary": _synthesize(spec, side, self._corpus_dir(side))}
                continue
            for p in paths:
                if p is not None and not Path(p).exists():
                    raise DataError(f"recipe {side} data: {p} does not exist")
            info[side] = {"source": "data folders"}
        return info

    def stage_source(self) -> dict:
        from cdino.eval.model_folder import read_model_info
        from cdino.train.stages import model_complete, train_supervised

        t0 = time.perf_counter()
        if self.r.source.model:
            info = {"model": str(self.source_model_dir), "trained": False}
        else:
            out = self.out / "source"
            if not model_complete(out / "model"):
                train_supervised(self.train_config("source"), self.source_data()[0], out,
                                 resume=(out / "checkpoints").is_dir())
            info = {"model": str(out / "model"), "trained": True,
                    "steps": read_model_info(out / "model").get("steps")}
        info["target"] = self._on_target(self.source_model_dir, "source")
        info["source_domain"] = self._on_source(self.source_model_dir, "before")
        info["seconds"] = time.perf_counter() - t0
        return info

    def stage_adapt(self) -> dict:
        from cdino.train.checkpoint import list_checkpoints
        from cdino.train.stages import round_diagnostics, train_pseudo_rounds

        out = self.out / "adapt"
        rounds: dict = {}

        def on_round(r, model_dir, summary):
            rounds[f"adapt_r{r}"] = {**self._on_target(model_dir, f"adapt_r{r}"),
                                     "seconds": summary["seconds"], **round_diagnostics(summary)}

        t0 = time.perf_counter()
        start, aligned = self.source_model_dir, None
        if self.r.align:  # label-free: target BatchNorm statistics, centring and calibration first
            from cdino.train.domain import align_to_domain
            from cdino.train.stages import model_complete

            start = out / "aligned"
            if not model_complete(start):
                align_to_domain(self.source_model_dir, self.train_config("adapt"), self.target_data()[0], start)
            aligned = {"target": self._on_target(start, "aligned"),
                       "source_domain": self._on_source(start, "aligned")}
        summaries = train_pseudo_rounds(self.train_config("adapt"), self.target_data()[0], start,
                                        out, resume=True, on_round=on_round)
        for s in summaries:  # rounds finished by an earlier run
            name = f"adapt_r{s['round']}"
            if name not in rounds:
                rounds[name] = {**self._on_target(out / f"round{s['round']}" / "model", name),
                                "seconds": s["seconds"], **round_diagnostics(s)}
        steps = sum(max((st for st, _ in list_checkpoints(out / f"round{r}" / "checkpoints")), default=0)
                    for r in range(1, self.rounds + 1))
        return {"rounds": rounds, "steps": steps, "aligned": aligned, "seconds": time.perf_counter() - t0}

    def stage_select(self) -> dict:
        """The model shipped: the stop rule's pick among the aligned model and the rounds
        (``ship: select``) or the last round; evaluated on the source domain (*after*)."""
        out, ada = self.out / "adapt", self.stage_info("adapt")
        candidates = {f"adapt_r{r}": out / f"round{r}" / "model" for r in range(1, self.rounds + 1)
                      if (out / f"round{r}" / "model" / "config.yaml").is_file()}  # fewer where pseudo.stop ended them
        shipped, selection = list(candidates)[-1], None
        if ada.get("aligned") is not None:
            candidates = {"aligned": out / "aligned", **candidates}
        if self.r.ship == "select" and len(candidates) > 1:
            selection = self._select(candidates)
            shipped = selection["pick"]
        target = ada["aligned"]["target"] if shipped == "aligned" else (ada.get("rounds") or {}).get(shipped, {})
        info = {"shipped": shipped, "selection": selection, "model": str(candidates[shipped]), "target": target,
                "source_domain": self._on_source(candidates[shipped], "after")}
        if self.r.asnorm_top_n > 0:  # a label-free scoring step: AS-norm against target recordings
            cohort, n = self._target_cohort(candidates[shipped], self.out / "select" / "cohort")
            info["target_asnorm"] = {**self._on_target(candidates[shipped], f"{shipped}_asnorm",
                                                       asnorm_top_n=self.r.asnorm_top_n, cohort=cohort),
                                     "top_n": self.r.asnorm_top_n, "cohort": n}
        return info

    def _select(self, candidates: dict) -> dict:
        """The stop rule: the candidate with the lowest label-free criterion on the target
        training recordings (rank 0 scores, every rank gets the answer)."""
        from cdino.distributed import resolve_device, shared_by_rank0
        from cdino.eval.selection import pick_candidate, score_candidates

        def pick() -> dict:
            device = str(resolve_device(self.train_config("adapt").trainer.device))
            values, _, _ = score_candidates(candidates, self.target_data()[0], device=device)
            criterion, best = pick_candidate(values)
            return {"criterion": criterion, "pick": best, "values": values}

        return shared_by_rank0(pick)

    def stage_oracle(self) -> dict:
        from cdino.distributed import is_main
        from cdino.eval.model_folder import read_model_info
        from cdino.train.stages import model_complete, train_supervised

        if not self.r.run_oracle:
            return {"skipped": "run_oracle is false"}
        if not self.target_has_labels():
            if is_main():
                print(f"[oracle] skipped: {self.target_data()[0]} has no utt2spk (no target labels)", flush=True)
            return {"skipped": "the target training folder has no utt2spk"}
        t0 = time.perf_counter()
        out = self.out / "oracle"
        if not model_complete(out / "model"):
            train_supervised(self.train_config("oracle"), self.target_data()[0], out,
                             resume=(out / "checkpoints").is_dir(),
                             init=self.source_model_dir if self.r.oracle_from_source else None)
        return {"model": str(out / "model"), "steps": read_model_info(out / "model").get("steps"),
                "target": self._on_target(out / "model", "oracle"), "seconds": time.perf_counter() - t0}

    def stage_report(self) -> dict:
        from cdino.pipeline.adapt_report import adapt_report_md, collect_adapt_results, print_adapt_summary

        results = collect_adapt_results(self)
        write_text(self.out / "results.json", json.dumps(results, indent=1, default=float) + "\n")
        write_text(self.out / "report.md", adapt_report_md(results))
        copy_folder(self.adapted_model_dir, self.out / "model")
        print_adapt_summary(results, self.out)
        return {"results": str(self.out / "results.json")}


def _synth_config(spec: SimulatedCorpus, side: str):
    from cdino.corpus.synth import SynthConfig

    try:
        return SynthConfig.preset(spec.preset, **{"domain": spec.domain, "seed": spec.seed, **spec.fields})
    except ConfigError as exc:
        raise ConfigError(f"recipe key '{side}.corpus': {exc}") from None


def _synthesize(spec: SimulatedCorpus, side: str, target: Path) -> dict:
    from cdino.corpus.synth import synthesize

    cfg = _synth_config(spec, side)
    shutil.rmtree(target, ignore_errors=True)
    return synthesize(target, cfg, progress=True)
