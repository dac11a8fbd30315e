"""Domain adaptation: the second simulated domain, and the adaptation recipe end to end."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cdino.corpus import synth
from cdino.corpus.synth import DOMAINS, SynthConfig, make_session, make_speaker, synthesize
from cdino.errors import ConfigError

OFFSET = DOMAINS["telephone"].speaker_offset


def _high_band_fraction(path: Path) -> float:
    x, sr = sf.read(path)
    power = np.abs(np.fft.rfft(x)) ** 2
    return float(power[np.fft.rfftfreq(len(x), 1 / sr) > 4000].sum() / power.sum())


# --------------------------------------------------------------------------- the second domain

def test_default_domain_is_the_corpus_it_always_was():
    """By design the default domain draws what the corpus drew before domains existed: the
    English accents, spk ids, no speaker offset, mu-law only, the old noise mix, no frame
    loss, no channel overrides (every addition comes from a stream of its own)."""
    d = DOMAINS["default"]
    assert d.accents == synth.ACCENTS and all(a.startswith("en") for a in d.accents)
    assert (d.speaker_prefix, d.speaker_offset, d.trial_key) == ("spk", 0, ())
    assert d.codecs == (("mulaw", 1.0),) and d.packet_loss == (0.0, 0.0) and d.channel == ()
    assert d.noises == (("coloured", 0.55), ("hum", 0.15), ("babble", 0.30))
    assert SynthConfig.preset("tiny") == SynthConfig.preset("tiny", domain="default")
    with pytest.raises(ConfigError, match="domain: unknown domain 'phone'"):
        SynthConfig.preset("tiny", domain="phone")


def test_telephone_domain_differs_as_designed(tmp_path):
    cfg = SynthConfig.preset("tiny", domain="telephone")
    assert cfg.telephone_prob == 0.9 and cfg.snr_db == (3.0, 25.0)  # the domain's channel mix
    out = tmp_path / "tel"
    synthesize(out, cfg, progress=False)
    speakers = sorted({line.split()[1] for split in ("train", "test")
                       for line in (out / split / "utt2spk").read_text().splitlines()})
    assert speakers == [f"tel{i:04d}" for i in range(1, 11)]  # ids never shared with spkNNNN

    # Other languages, other speakers: every accent from the new set, every voice new.
    tel = [make_speaker(cfg.seed, OFFSET + i, "telephone") for i in range(1, 11)]
    eng = [make_speaker(cfg.seed, i) for i in range(1, 11)]
    assert {s.accent for s in tel} <= set(synth.TELEPHONE_ACCENTS)
    assert not set(synth.TELEPHONE_ACCENTS) & set(synth.ACCENTS) and len({s.accent for s in tel}) >= 3
    assert all(a.variant_text != b.variant_text for a, b in zip(tel, eng))

    # Mostly telephone band with a codec: nothing above 4 kHz in a telephone session.
    fractions, narrow = [], []
    for split in ("train", "test"):
        for line in (out / split / "wav.scp").read_text().splitlines():
            utt, rel = line.split()
            number, session = int(utt[3:7]), int(utt.split("-")[1][1:])
            fractions.append(_high_band_fraction(out / split / rel))
            narrow.append(make_session(cfg, OFFSET + number, session).telephone)
    fractions, narrow = np.array(fractions), np.array(narrow)
    assert narrow.mean() >= 0.7
    assert fractions[narrow].max() < 1e-4
    assert np.median(fractions) < 1e-4

    # Codecs and noises of the domain (its own generator; many sessions, no audio).
    sessions = [make_session(cfg, OFFSET + i, s) for i in range(1, 31) for s in (1, 2)]
    assert {s.codec for s in sessions if s.telephone} == {"mulaw", "alaw", "gsm"}
    kinds = {s.noise_kind for s in sessions}
    assert {"street", "music", "clicks"} <= kinds <= {k for k, _ in DOMAINS["telephone"].noises}
    assert any(s.packet_loss > 0 for s in sessions)


def test_codecs_keep_the_signal_and_lose_frames():
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 8000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    for name, min_snr in (("mulaw", 25), ("alaw", 25), ("gsm", 10)):
        y = synth._CODECS[name](x)
        snr = 10 * np.log10(np.sum(x ** 2) / np.sum((x - y) ** 2))
        assert min_snr < snr < 80, (name, snr)  # lossy, but the signal survives
    lost = synth._lose_frames(x, 0.3, rng)
    changed = np.mean([not np.array_equal(lost[k:k + 160], x[k:k + 160]) for k in range(0, 8000, 160)])
    assert 0.1 < changed < 0.5


# --------------------------------------------------------------------------- the recipe

KEYS = ("eer", "mindcf_0.01", "mindcf_0.05")


@pytest.fixture(scope="module")
def adapt_quick(tmp_path_factory):
    from cdino.pipeline.run import run_recipe

    out = tmp_path_factory.mktemp("adapt") / "exp"
    t0 = time.perf_counter()
    results = run_recipe("adapt-quick", out)  # dispatched on the recipe's `kind: adapt`
    return out, results, time.perf_counter() - t0


def test_adapt_quick_runs_end_to_end(adapt_quick):
    out, results, _ = adapt_quick
    assert results == json.loads((out / "results.json").read_text())
    a = results["adapt"]
    for entry in (a["target"]["source"], a["target"]["adapted"], a["target"]["oracle"],
                  a["source_domain"]["before"], a["source_domain"]["after"]):
        assert all(0.0 <= entry[k] <= 1.0 for k in KEYS)
        assert entry["eer_ci95"][0] <= entry["eer"] <= entry["eer_ci95"][1]
    # the stop rule picked the shipped model among the aligned model and the rounds, without labels
    sel = results["selection"]
    assert set(sel["values"]) == {"aligned", "adapt_r1", "adapt_r2"} and results["final"] == sel["pick"]
    assert sel["criterion"] == "cross_view"  # the simulated target has a face proxy
    assert sel["pick"] == min(sel["values"], key=lambda n: sel["values"][n]["cross_view"])
    shipped = a["target"]["aligned"] if sel["pick"] == "aligned" else results["rounds"][sel["pick"]]
    assert all(a["target"]["adapted"][k] == shipped[k] for k in KEYS)
    from safetensors.numpy import load_file

    folder = out / "adapt" / ("aligned" if sel["pick"] == "aligned" else f"round{sel['pick'][-1]}/model")
    got, want = load_file(str(out / "model" / "encoder.safetensors")), load_file(str(folder / "encoder.safetensors"))
    assert all((got[k] == want[k]).all() for k in want)  # the exported model is the pick
    assert results["steps"]["adapt"] == results["steps"]["oracle"] > 0  # the oracle at equal steps
    for goal in results["goals"].values():
        assert goal["status"] in ("met", "missed", "not measured")
    report = (out / "report.md").read_text()
    assert "| (a) source model |" in report and "| (c) oracle" in report and "## Goals" in report
    assert "## Stop rule" in report and "(shipped)" in report
    # AS-norm against unlabelled target training recordings: the shipped model's own step
    asn = a["target_asnorm"]
    assert all(0.0 <= asn[k] <= 1.0 for k in KEYS) and asn["top_n"] == 20
    n_train = len((out / "corpus" / "target" / "train" / "wav.scp").read_text().splitlines())
    assert asn["cohort"] == min(2000, n_train)
    assert len((out / "select" / "cohort" / "utts.txt").read_text().split()) == asn["cohort"]
    plain, normed = ((out / "eval" / "target" / name / "scores.txt").read_text()
                     for name in (results["final"], f"{results['final']}_asnorm"))
    assert plain.split()[:2] == normed.split()[:2] and plain != normed  # the same trials, other scores
    assert "| (b+) adapted, AS-norm scoring (top 20" in report
    import cdino

    model = cdino.load_model(out / "model")  # the adapted model, exported
    wavs = sorted((out / "corpus" / "target" / "test" / "wav").rglob("*.wav"))
    assert -1.0 <= model.score(wavs[0], wavs[-1]) <= 1.0


def test_rerun_skips_done_stages(adapt_quick, capsys):
    from cdino.pipeline.run import run_recipe

    out, first, seconds = adapt_quick
    capsys.readouterr()
    t0 = time.perf_counter()
    again = run_recipe("adapt-quick", out)
    printed = capsys.readouterr().out
    for stage in ("corpus", "source", "adapt", "select", "oracle"):
        assert f"[{stage}] done, skipped" in printed
    assert again["adapt"] == first["adapt"]
    assert time.perf_counter() - t0 < seconds / 2


def test_from_stage_removes_that_stage_on(adapt_quick, tmp_path):
    from cdino.pipeline.adapt import AdaptPipeline, load_adapt_recipe

    out = tmp_path / "exp"
    for stage in ("corpus", "source", "adapt", "select", "oracle", "report"):
        (out / stage).mkdir(parents=True)
        (out / stage / "done.json").write_text("{}")
    pipe = AdaptPipeline(load_adapt_recipe("adapt-quick"), out)
    pipe.reset_from("adapt")
    assert pipe.done("corpus") and pipe.done("source")
    assert not (out / "adapt").exists() and not (out / "oracle").exists() and not pipe.done("report")
    with pytest.raises(ConfigError, match="unknown stage 'dino'"):
        pipe.reset_from("dino")


def test_a_team_adapts_its_own_model_on_unlabelled_data(adapt_quick, tmp_path):
    """The README workflow: a model folder, an unlabelled target folder, a labelled target
    test folder; no oracle without target labels, the gap goal then not measured."""
    from cdino.pipeline.run import run_recipe

    src, _, _ = adapt_quick
    target = tmp_path / "target_train"
    shutil.copytree(src / "corpus" / "target" / "train", target)
    for name in ("utt2spk", "spk2utt"):
        (target / name).unlink()
    recipe = tmp_path / "ours.yaml"
    recipe.write_text(f"""kind: adapt
source: {{model: {src / 'source' / 'model'}, test: {src / 'corpus' / 'source' / 'test'}}}
target: {{train: {target}, test: {src / 'corpus' / 'target' / 'test'}}}
base: {{trainer: {{global_batch: 16, threads: 1, progress: false, tensorboard: false}}, data: {{store: memory}},
        optim: {{name: adamw, lr: 0.001, lr_scale_with_batch: false, warmup_epochs: 0.0}}}}
adapt: {{trainer: {{epochs: 1}}, pseudo: {{rounds: 1, kmeans: {{n_clusters: 12}}, min_seconds: 1.0, max_seconds: 1.0}}}}
bootstrap: 0
""")
    res = run_recipe(recipe, tmp_path / "exp")
    a = res["adapt"]
    assert a["target"]["oracle"] is None and res["goals"]["gap_closed"]["status"] == "not measured"
    # The source model given is evaluated as is: the same EER as in the built-in run.
    first = json.loads((src / "results.json").read_text())["adapt"]
    assert a["target"]["source"]["eer"] == first["target"]["source"]["eer"]
    assert a["source_domain"]["before"]["eer"] == first["source_domain"]["before"]["eer"]
    assert 0.0 <= a["source_domain"]["after"]["eer"] <= 1.0
    assert res["goals"]["source_forgetting"]["status"] in ("met", "missed")
    assert not (tmp_path / "exp" / "source").joinpath("model").exists()  # nothing trained on the source


def test_joint_rounds_take_the_labelled_source_beside_the_target(adapt_quick, tmp_path):
    """``joint: true``: the source model adapted while the labelled source data joins the
    round (its speakers as classes); the round has the target's steps alone. Without
    labelled source data, joint is refused before anything runs."""
    from cdino.data.kaldi_dir import DataDir
    from cdino.pipeline.run import run_recipe

    src, _, _ = adapt_quick
    corpus = src / "corpus"
    text = f"""kind: adapt
joint: true
source: {{model: {src / 'source' / 'model'}, train: {corpus / 'source' / 'train'}, test: {corpus / 'source' / 'test'}}}
target: {{train: {corpus / 'target' / 'train'}, test: {corpus / 'target' / 'test'}}}
base: {{trainer: {{global_batch: 16, threads: 1, progress: false, tensorboard: false}}, data: {{store: memory}},
        optim: {{name: adamw, lr: 0.001, lr_scale_with_batch: false, warmup_epochs: 0.0}}}}
adapt: {{trainer: {{epochs: 1}}, pseudo: {{rounds: 1, kmeans: {{n_clusters: 12}}, min_seconds: 1.0, max_seconds: 1.0}}}}
run_oracle: false
bootstrap: 0
"""
    (tmp_path / "joint.yaml").write_text(text)
    res = run_recipe(tmp_path / "joint.yaml", tmp_path / "exp")
    summary = json.loads((tmp_path / "exp" / "adapt" / "round1" / "summary.json").read_text())
    source = DataDir.load(corpus / "source" / "train")
    target = DataDir.load(corpus / "target" / "train")
    joined = summary["clustering"]["labelled"]
    assert joined["speakers"] == len(set(source.utt2spk.values()))
    assert joined["utterances"] == min(len(source.utts), len(target.utts))
    from cdino.train.checkpoint import list_checkpoints

    steps = max(st for st, _ in list_checkpoints(tmp_path / "exp" / "adapt" / "round1" / "checkpoints"))
    assert steps == len(target.utts) // 16  # one epoch: the target's steps alone
    # the exported round describes the target: BatchNorm statistics of its recordings alone
    assert summary["batchnorm"]["recordings"] == str(target.root) and summary["batchnorm"]["layers"] > 0
    assert 0.0 <= res["adapt"]["source_domain"]["after"]["eer"] <= 1.0
    (tmp_path / "model_only.yaml").write_text(text.replace(f", train: {corpus / 'source' / 'train'}", ""))
    with pytest.raises(ConfigError, match="joint: needs labelled source data"):
        run_recipe(tmp_path / "model_only.yaml", tmp_path / "exp2")


@pytest.mark.parametrize("text,key", [
    ("kind: adapt\ntargte: {}\n", "targte"),
    ("kind: adapt\nadapt: {trainer: {epoch: 3}}\n", "trainer.epoch"),
    ("kind: adapt\ntarget: {corpus: {preset: tiny, fields: {n_train_speaker: 3}}}\n", "n_train_speaker"),
    ("kind: adapt\nsource: {corpus: {tyop: 1}}\n", "source.corpus.tyop"),
])
def test_a_bad_config_key_is_named(tmp_path, text, key):
    from cdino.cli import main
    from cdino.pipeline.run import run_recipe

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"'[^']*{key.replace('.', '[.]')}'"):
        run_recipe(path, tmp_path / "exp")
    assert main(["run", str(path), "--out", str(tmp_path / "exp")]) == 2
    assert not (tmp_path / "exp" / "corpus").exists()  # refused before anything ran


def test_builtin_adapt_recipe_and_the_readme_recipe_load(tmp_path):
    """The built-in recipe's stages: the oracle gets the adaptation's step budget; the
    README's example recipe is a valid adaptation recipe, key for key."""
    import re

    from cdino.config import from_dict
    from cdino.pipeline.adapt import AdaptPipeline, load_adapt_recipe
    from cdino.pipeline.recipe_source import merge_overrides, recipe_kind
    from cdino.train.trainer import TrainConfig

    assert recipe_kind("adapt") == recipe_kind("adapt-quick") == "adapt" and recipe_kind("quick") == "pipeline"
    pipe = AdaptPipeline(load_adapt_recipe("adapt"), tmp_path / "exp")
    adapt, oracle = pipe.train_config("adapt"), pipe.train_config("oracle")
    assert pipe.rounds == 1 and oracle.trainer.epochs == pipe.rounds * adapt.trainer.epochs
    assert adapt.pseudo.labelled == str(pipe.source_data()[0])  # joint: the labelled source joins the round
    assert oracle.trainer.global_batch == adapt.trainer.global_batch
    assert oracle.encoder == adapt.encoder == pipe.train_config("source").encoder
    assert pipe.source_simulated and pipe.target_simulated

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"^```yaml\n(kind: adapt\n.*?)^```", readme, flags=re.S | re.M).group(1)
    (tmp_path / "ours.yaml").write_text(block)
    recipe = load_adapt_recipe(tmp_path / "ours.yaml")
    assert recipe.source.model == "exp/source/model" and recipe.target.train == "DATA/calls_train"
    for stage in (recipe.adapt, recipe.oracle):
        from_dict(TrainConfig, merge_overrides(recipe.base, stage))
