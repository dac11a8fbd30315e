"""Domain adaptation as a recipe: a speaker model from one domain adapted to another
without target labels, by pseudo-label rounds with DLG-LC on the unlabelled target data.

    corpus    the simulated corpora the recipe names (source: the English default domain,
              target: a second domain such as ``telephone``), or checks the data folders
    source    the model to adapt: an existing model folder, or supervised training on the
              labelled source data (true labels, as ``cdino train --method supervised``)
    adapt     R rounds of extract → k-means → AAM + DLG-LC training on the target training
              folder, starting from the source model; its labels are never read
    oracle    supervised training on the target's true labels for as many steps as the
              adaptation took (the upper reference); skipped when the target has no utt2spk
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
corpus, k-means, scoring and the report are rank 0's, as in :mod:`cdino.recipe`.

Not built: joint training in which the labelled source data joins each round with its
true labels (a separate classifier head per source), the other usual form of
unsupervised domain adaptation; the rounds here see target audio only.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cdino.atomic import copy_folder, write_text
from cdino.config import from_dict, load_config, to_dict
from cdino.errors import ConfigError, DataError
from cdino.recipe import StagedRun, _merge, _read_info, _round_diag, builtin_recipe

ADAPT_STAGES = ["corpus", "source", "adapt", "oracle", "report"]
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
    train: str | None = None  # labelled source training folder (utt2spk) for the supervised source model
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
    goals: AdaptGoals = field(default_factory=AdaptGoals)
    bootstrap: int = 500  # bootstrap resamples for the EER confidence intervals

    def validate(self) -> None:
        if self.kind != "adapt":
            raise ConfigError(f"kind: an adaptation recipe has kind 'adapt', got '{self.kind}'")
        if self.target.train and not self.target.test:
            raise ConfigError("target.test: a target training folder needs a target test folder "
                              "(the adaptation is judged on its trials)")
        if self.source.model and self.source.train:
            raise ConfigError("source: give source.model (a model to adapt) or source.train "
                              "(labelled data to train one on), not both")
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap: must be >= 0, got {self.bootstrap}")


def _resolve(source: str | Path) -> Path:
    path = Path(source)
    if not path.is_file() and not str(source).endswith((".yaml", ".yml")):
        path = builtin_recipe(str(source))
    return path


def is_adapt_recipe(source: str | Path) -> bool:
    """Whether ``source`` (a YAML file or a built-in name) is an adaptation recipe: its
    top-level ``kind`` is ``adapt``. Anything unreadable is left to the caller's loader."""
    try:
        data = yaml.safe_load(_resolve(source).read_text())
    except (ConfigError, OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and data.get("kind") == "adapt"


def load_adapt_recipe(source: str | Path, overrides=()) -> AdaptRecipeConfig:
    """Read an adaptation recipe strictly: an unknown key raises ConfigError naming it."""
    return load_config(AdaptRecipeConfig, _resolve(source), overrides=list(overrides))


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
            return from_dict(TrainConfig, _merge(self.r.base, self.r.supervised), where=where)
        adapt = from_dict(TrainConfig, _merge(self.r.base, self.r.adapt, self._architecture()),
                          where="adaptation recipe stage 'adapt'")
        if stage == "adapt":
            return adapt
        budget = {"trainer": {"epochs": adapt.pseudo.rounds * adapt.trainer.epochs + adapt.pseudo.large_margin_epochs,
                              "steps_per_epoch": adapt.trainer.steps_per_epoch,
                              "global_batch": adapt.trainer.global_batch}}
        return from_dict(TrainConfig, _merge(self.r.base, self.r.oracle, self._architecture(), budget), where=where)

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
        return self.out / "adapt" / f"round{self.rounds}" / "model"

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

    def evaluate(self, model_dir: Path, test: Path, trials: Path, name: str) -> dict:
        """EER / minDCF of a model on a test folder (reporting only). Called on every rank:
        the ranks embed together; rank 0 scores and returns the result, the others ``{}``."""
        from cdino.verbs import run_eval
        from cdino.distributed import is_main, resolve_device

        cfg = self.train_config("adapt")
        edir = self.out / "eval" / name
        if is_main():
            edir.mkdir(parents=True, exist_ok=True)
        return dict(run_eval(model_dir, test, trials, edir / "eval.json", scores_out=edir / "scores.txt",
                             progress=False, label=name, device=str(resolve_device(cfg.trainer.device)),
                             distributed=True, optimize="fp32", num_workers=cfg.data.num_workers))

    def _on_target(self, model_dir: Path, name: str) -> dict:
        _, test, trials = self.target_data()
        return self.evaluate(model_dir, test, trials, f"target/{name}")

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
                    "steps": _read_info(out / "model").get("steps")}
        info["target"] = self._on_target(self.source_model_dir, "source")
        info["source_domain"] = self._on_source(self.source_model_dir, "before")
        info["seconds"] = time.perf_counter() - t0
        return info

    def stage_adapt(self) -> dict:
        from cdino.train.checkpoint import list_checkpoints
        from cdino.train.stages import train_pseudo_rounds

        out = self.out / "adapt"
        rounds: dict = {}

        def on_round(r, model_dir, summary):
            rounds[f"adapt_r{r}"] = {**self._on_target(model_dir, f"adapt_r{r}"),
                                     "seconds": summary["seconds"], **_round_diag(summary)}

        t0 = time.perf_counter()
        summaries = train_pseudo_rounds(self.train_config("adapt"), self.target_data()[0], self.source_model_dir,
                                        out, resume=True, on_round=on_round)
        for s in summaries:  # rounds finished by an earlier run
            name = f"adapt_r{s['round']}"
            if name not in rounds:
                rounds[name] = {**self._on_target(out / f"round{s['round']}" / "model", name),
                                "seconds": s["seconds"], **_round_diag(s)}
        steps = sum(max((st for st, _ in list_checkpoints(out / f"round{r}" / "checkpoints")), default=0)
                    for r in range(1, self.rounds + 1))
        return {"rounds": rounds, "steps": steps, "model": str(self.adapted_model_dir),
                "target": rounds.get(f"adapt_r{self.rounds}", {}),
                "source_domain": self._on_source(self.adapted_model_dir, "after"),
                "seconds": time.perf_counter() - t0}

    def stage_oracle(self) -> dict:
        from cdino.distributed import is_main
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
                             resume=(out / "checkpoints").is_dir())
        return {"model": str(out / "model"), "steps": _read_info(out / "model").get("steps"),
                "target": self._on_target(out / "model", "oracle"), "seconds": time.perf_counter() - t0}

    def stage_report(self) -> dict:
        results = collect_adapt_results(self)
        write_text(self.out / "results.json", json.dumps(results, indent=1, default=float) + "\n")
        write_text(self.out / "report.md", adapt_report_md(results))
        copy_folder(self.adapted_model_dir, self.out / "model")
        _print_summary(results, self.out)
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


# ---------------------------------------------------------------------- results

METRICS = ("eer", "mindcf_0.01", "mindcf_0.05", "cllr", "min_cllr", "n_trials")


def _entry(res: dict | None, scores_path: Path, labels, n_boot: int) -> dict | None:
    """The reported metrics of one evaluation, with a bootstrap 95 % EER interval from the
    scores it wrote (``labels``: its trials' target flags)."""
    if not res or "eer" not in res:
        return None
    entry = {k: res[k] for k in METRICS if res.get(k) is not None}
    if n_boot > 0 and labels is not None and scores_path.is_file():
        import numpy as np

        from cdino.metrics import bootstrap_eer

        scores = np.array([float(line.split()[2]) for line in scores_path.read_text().splitlines() if line.strip()])
        if len(scores) == len(labels):
            lo, hi = bootstrap_eer(scores, labels, n_boot=n_boot, seed=0)
            entry["eer_ci95"] = [float(lo), float(hi)]
    return entry


def _trial_labels(path: Path | None):
    import numpy as np

    from cdino.data.kaldi_dir import read_trials

    return None if path is None or not Path(path).is_file() else np.asarray(read_trials(path).labels)


def _goals(res: dict, goals: AdaptGoals) -> dict:
    tgt, src = res["target"], res["source_domain"]
    out = {}
    a, b, c = (tgt[k]["eer"] if tgt.get(k) else None for k in ("source", "adapted", "oracle"))
    gap = {"target": goals.gap_closed, "value": None, "status": "not measured"}
    if None in (a, b, c):
        gap["why"] = "no oracle (no target labels, or run_oracle false)" if c is None else "missing evaluation"
    elif a - c <= 0:
        gap["why"] = f"no gap: the oracle ({100 * c:.2f} %) is not better than the source model ({100 * a:.2f} %)"
    else:
        gap["value"] = (a - b) / (a - c)
        gap["status"] = "met" if gap["value"] >= goals.gap_closed else "missed"
    out["gap_closed"] = gap
    before, after = (src[k]["eer"] if src.get(k) else None for k in ("before", "after"))
    loss = {"target": goals.max_source_loss, "value": None, "status": "not measured"}
    if None in (before, after):
        loss["why"] = "no source test trials"
    else:
        loss["value"] = (after - before) / before if before > 0 else (0.0 if after <= 0 else math.inf)
        loss["status"] = "met" if loss["value"] <= goals.max_source_loss else "missed"
    out["source_forgetting"] = loss
    return out


def collect_adapt_results(pipe: AdaptPipeline) -> dict:
    """results.json of an adaptation run: ``adapt.target.{source,adapted,oracle}`` and
    ``adapt.source_domain.{before,after}`` (EER and minDCF as fractions), the rounds,
    step counts, goals and seconds."""
    _, s_test, s_trials = pipe.source_data()
    _, t_test, t_trials = pipe.target_data()
    labels = {"target": _trial_labels(t_trials), "source_domain": _trial_labels(s_trials)}

    def entry(info: dict, name: str) -> dict | None:
        side = name.split("/")[0]
        return _entry(info.get(side), pipe.out / "eval" / name / "scores.txt", labels[side], pipe.r.bootstrap)

    src, ada, ora = pipe.stage_info("source"), pipe.stage_info("adapt"), pipe.stage_info("oracle")
    last = f"adapt_r{pipe.rounds}"
    res = {
        "target": {"source": entry(src, "target/source"), "adapted": entry(ada, f"target/{last}"),
                   "oracle": entry(ora, "target/oracle")},
        "source_domain": {"before": entry(src, "source_domain/before"), "after": entry(ada, "source_domain/after")},
    }
    seconds = {s: pipe.stage_info(s).get("seconds") for s in ADAPT_STAGES[:-1]}
    seconds["total"] = sum(v for v in seconds.values() if v)
    rounds = {}
    for name, r in (ada.get("rounds") or {}).items():
        keep = {k: r[k] for k in ("eer", "mindcf_0.01", "mindcf_0.05", "nmi", "purity", "n_clusters", "seconds")
                if r.get(k) is not None}
        rounds[name] = keep
    return {
        "name": pipe.r.name,
        "kind": "adapt",
        "scoring": "cosine, train-mean subtracted (each model's own training mean)",
        "data": {"source": {"model": str(pipe.source_model_dir), "test": _str(s_test), "trials": _str(s_trials)},
                 "target": {"train": str(pipe.target_data()[0]), "test": str(t_test), "trials": str(t_trials)}},
        "adapt": res,
        "rounds": rounds,
        "steps": {"source": src.get("steps"), "adapt": ada.get("steps"), "oracle": ora.get("steps")},
        "oracle": ora.get("skipped", "trained on the target's true labels, as many steps as the adaptation"),
        "goals": _goals(res, pipe.r.goals),
        "final": last,
        "seconds": seconds,
    }


def _str(p) -> str | None:
    return None if p is None else str(p)


def _pct(entry: dict | None, key: str = "eer") -> str:
    if not entry or entry.get(key) is None:
        return "–"
    if key != "eer":
        return f"{entry[key]:.3f}"
    ci = entry.get("eer_ci95")
    return f"{100 * entry['eer']:.2f}" + (f" ({100 * ci[0]:.2f}–{100 * ci[1]:.2f})" if ci else "")


def _goal_lines(goals: dict) -> list[str]:
    g, f = goals["gap_closed"], goals["source_forgetting"]
    lines = []
    text = (f"{g['value']:.2f} of the gap closed" if g["value"] is not None else g.get("why", ""))
    lines.append(f"adapted model closes ≥ {g['target']:.2f} of the source → oracle gap on the target: "
                 f"**{g['status']}** ({text})")
    text = (f"{100 * f['value']:+.1f} % relative source-domain EER" if f["value"] is not None
            else f.get("why", ""))
    lines.append(f"adapted model loses ≤ {100 * f['target']:.0f} % relative on the source domain: "
                 f"**{f['status']}** ({text})")
    return lines


def adapt_report_md(results: dict) -> str:
    a, steps = results["adapt"], results["steps"]
    t, s = a["target"], a["source_domain"]
    oracle_steps = f", {steps['oracle']} steps" if steps.get("oracle") else ""
    rows = [("(a) source model", t["source"], s["before"]),
            (f"(b) adapted ({len(results['rounds'])} DLG-LC rounds, {steps.get('adapt')} steps)", t["adapted"], s["after"]),
            (f"(c) oracle (target labels{oracle_steps})", t["oracle"], None)]
    out = [f"# Domain adaptation: {results['name']}", "",
           "Target-domain trials score the models on the domain adapted to; source-domain trials show "
           "what the adaptation forgets. EER in % (95 % bootstrap interval over trials), minDCF absolute. "
           "The adaptation used no target labels.", "",
           "| model | target EER % | target minDCF 0.01 | target minDCF 0.05 | source-domain EER % | source-domain minDCF 0.01 |",
           "|---|---|---|---|---|---|"]
    for name, tgt, src in rows:
        out.append(f"| {name} | {_pct(tgt)} | {_pct(tgt, 'mindcf_0.01')} | {_pct(tgt, 'mindcf_0.05')} | "
                   f"{_pct(src)} | {_pct(src, 'mindcf_0.01')} |")
    out += ["", "## Goals", ""] + [f"- {line}" for line in _goal_lines(results["goals"])]
    if results["rounds"]:
        out += ["", "## Rounds (target test trials; clustering scored against the target labels, diagnostics only)", "",
                "| round | EER % | minDCF 0.01 | NMI | purity | seconds |", "|---|---|---|---|---|---|"]
        for name, r in results["rounds"].items():
            nmi = f"{r['nmi']:.3f}" if "nmi" in r else "–"
            pur = f"{r['purity']:.3f}" if "purity" in r else "–"
            out.append(f"| {name} | {_pct(r)} | {_pct(r, 'mindcf_0.01')} | {nmi} | {pur} | {r.get('seconds', 0):.0f} |")
    d = results["data"]
    out += ["", "## Data", "",
            f"- source model: `{d['source']['model']}`; source test trials: `{d['source']['trials']}`",
            f"- target training audio (unlabelled): `{d['target']['train']}`; target trials: `{d['target']['trials']}`",
            f"- oracle: {results['oracle']}",
            f"- total {results['seconds']['total']:.0f} s (" + ", ".join(
                f"{k} {v:.0f} s" for k, v in results["seconds"].items() if k != "total" and v) + ")",
            "", "Not built: joint rounds with the labelled source data (a separate classifier head per source).", ""]
    return "\n".join(out)


def _print_summary(results: dict, out: Path) -> None:
    a = results["adapt"]
    for label, entry in (("target  source model", a["target"]["source"]), ("target  adapted", a["target"]["adapted"]),
                         ("target  oracle", a["target"]["oracle"]), ("source  before", a["source_domain"]["before"]),
                         ("source  after", a["source_domain"]["after"])):
        print(f"{label:<22} EER {_pct(entry)} %")
    for line in _goal_lines(results["goals"]):
        print("goal " + line.replace("**", ""))
    print(f"adaptation finished: {results['seconds']['total']:.0f} s in all; see {out / 'report.md'}")


def run_adapt(source: str | Path, out: Path, from_stage: str | None = None, overrides=()) -> dict:
    """``cdino run ADAPT_RECIPE --out EXP``: load the recipe strictly and run it."""
    return AdaptPipeline(load_adapt_recipe(source, overrides), Path(out)).run(from_stage)
