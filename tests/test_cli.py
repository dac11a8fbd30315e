"""The `cdino` command line: help, one-line errors, train → eval → verify → export."""

from __future__ import annotations

import json
import subprocess
import sys

from cdino.cli import main
from conftest import write_trials_for

VERBS = ["demo", "run", "corpus", "prepare", "train", "embed", "eval", "verify", "score", "export",
         "calibrate", "import", "select"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdino.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_help_lists_every_verb():
    out = run_cli("--help")
    assert out.returncode == 0
    for verb in VERBS:
        assert verb in out.stdout


def test_errors_are_one_line_with_exit_2(tmp_path, capsys):
    rc = main(["eval", "--model", str(tmp_path / "nope"), "--data", str(tmp_path), "--trials",
               str(tmp_path / "t"), "--json", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err


def test_unknown_config_key_names_it(tiny_data, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer:\n  epocs: 3\n")
    rc = main(["train", "--method", "dino", "--data", str(tiny_data), "--out", str(tmp_path / "e"),
               "--config", str(cfg)])
    err = capsys.readouterr().err
    assert rc == 2 and "trainer.epocs" in err and str(cfg) in err
    assert not (tmp_path / "e").exists()  # nothing was started


def test_train_eval_verify_export(tiny_data, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "encoder: {name: ecapa_tdnn_small}\n"
        "trainer: {epochs: 1, global_batch: 8, progress: false, tensorboard: false, threads: 1}\n"
        "optim: {name: adamw, lr: 0.001, lr_scale_with_batch: false, warmup_epochs: 0.2}\n"
        "dino: {out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, global_seconds: 0.6, local_seconds: 0.3, n_local: 2}\n")
    exp = tmp_path / "exp"
    assert main(["train", "--method", "dino", "--data", str(tiny_data), "--out", str(exp),
                 "--config", str(cfg)]) == 0
    model = exp / "model"
    assert (model / "config.yaml").is_file() and (exp / "config.yaml").is_file()
    trials = write_trials_for(tiny_data, tmp_path / "trials")
    out_json = tmp_path / "res.json"
    assert main(["eval", "--model", str(model), "--data", str(tiny_data), "--trials", str(trials),
                 "--json", str(out_json), "--scores", str(tmp_path / "scores"),
                 "--plots", str(tmp_path / "plots"), "--device", "cpu"]) == 0
    res = json.loads(out_json.read_text())
    assert set(res) >= {"eer", "mindcf_0.01", "mindcf_0.05", "n_trials"} and 0 <= res["eer"] <= 1
    # the export stored a label-free calibration, so eval reports calibrated metrics
    cal = json.loads((model / "calibration.json").read_text())
    assert cal["a"] > 0 and "pseudo labels" in cal["source"] and cal["n_target"] == 10000
    assert res["cllr"] is not None and res["cllr"] >= res["min_cllr"] - 1e-9
    assert len((tmp_path / "scores").read_text().splitlines()) == res["n_trials"]
    assert list((tmp_path / "plots").glob("*.png"))
    capsys.readouterr()
    wavs = sorted((tiny_data / "wav").glob("*.wav"))
    assert main(["verify", "--model", str(model), str(wavs[0]), str(wavs[1])]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    parts = dict(kv.split("=") for kv in line.split())
    assert list(parts) == ["score", "threshold", "decision", "llr", "prior"]
    assert parts["decision"] in ("same", "different") and parts["prior"] == "0.5"
    assert (float(parts["llr"]) >= 0) == (parts["decision"] == "same")
    assert main(["export", "--model", str(model), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 10000


def _subparsers():
    import argparse

    from cdino.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_argument_of_every_verb_has_help():
    import argparse

    from cdino.pipeline.method import STAGES

    verbs = _subparsers()
    assert set(VERBS) <= set(verbs)
    missing = [f"{name} {a.option_strings[0] if a.option_strings else a.dest}"
               for name, sp in verbs.items() for a in sp._actions
               if not isinstance(a, argparse._HelpAction) and (not a.help or a.help == argparse.SUPPRESS)]
    assert missing == []
    for name in ("demo", "run"):
        text = verbs[name].format_help()
        assert all(stage in " ".join(text.split()) for stage in STAGES), name
    options = {name: {o for a in sp._actions for o in a.option_strings} for name, sp in verbs.items()}
    assert {"--device", "--json", "--threshold"} <= options["verify"]
    assert {"--model", "--pairs", "--out", "--data", "--threshold", "--device"} <= options["score"]
    verify_help = " ".join(verbs["verify"].format_help().split())
    assert "--device" in verify_help and "JSON" in verify_help


def test_readme_command_table_covers_the_verbs_and_train_options():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `cdino ")]
    for verb in VERBS:
        assert any(row.startswith(f"| `cdino {verb}") for row in rows), verb
    train = next(row for row in rows if row.startswith("| `cdino train"))
    for option in ("--init", "--resume", "--config", "--data", "--out"):
        assert option in train, option
    verify = next(row for row in rows if row.startswith("| `cdino verify"))
    assert "--json" in verify and "--threshold" in verify


def test_pytest_removes_the_temp_folders_of_passing_tests(pytestconfig):
    # pyproject.toml's [tool.pytest.ini_options], as pytest read them for this run
    assert pytestconfig.getini("tmp_path_retention_policy") == "failed"
    assert int(pytestconfig.getini("tmp_path_retention_count")) <= 1


def test_verify_with_an_unavailable_device_is_one_line_error(tmp_path, capsys, monkeypatch):
    import numpy as np
    import soundfile as sf
    import torch

    from cdino.api import save_model_folder
    from cdino.frontend.fbank import FbankConfig
    from cdino.models.registry import EncoderConfig, build_encoder

    cfg = EncoderConfig(name="ecapa_tdnn_small", channels=16, embed_dim=32)
    model = save_model_folder(tmp_path / "model", build_encoder(cfg).eval(), cfg, FbankConfig(),
                              np.zeros(32, np.float32), 0.5, "test")
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(24000) * 0.05).astype(np.float32), 16000)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["verify", "--model", str(model), "--device", "cuda", str(wav), str(wav)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device 'cuda': CUDA is not available") and err.count("\n") == 1
    assert main(["verify", "--model", str(model), "--device", "auto", str(wav), str(wav)]) == 0
    assert capsys.readouterr().out.strip().endswith("decision=same")


def _model_folder(path, channels: int, seed: int):
    """A model folder of an untrained small ECAPA-TDNN (weights from ``seed``)."""
    import numpy as np
    import torch

    from cdino.eval.model_folder import save_model_folder
    from cdino.frontend.fbank import FbankConfig
    from cdino.models.registry import EncoderConfig, build_encoder

    cfg = EncoderConfig(name="ecapa_tdnn_small", channels=channels)
    torch.manual_seed(seed)
    encoder = build_encoder(cfg)
    return save_model_folder(path, encoder, cfg, FbankConfig(), np.zeros(encoder.embed_dim), 0.5, "test")


def test_supervised_training_starts_from_init(tiny_data, tmp_path, capsys):
    from cdino.eval.model_folder import read_model_folder, read_model_info

    init = _model_folder(tmp_path / "init", channels=64, seed=123)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "encoder: {name: ecapa_tdnn_small}\n"
        "trainer: {epochs: 1, steps_per_epoch: 2, global_batch: 8, progress: false, tensorboard: false, threads: 1}\n"
        "optim: {name: adamw, lr: 1.0e-6, final_lr: 1.0e-7, lr_scale_with_batch: false, warmup_epochs: 0}\n"
        "pseudo: {min_seconds: 0.5, max_seconds: 0.5}\n")
    exp = tmp_path / "exp"
    assert main(["train", "--method", "supervised", "--init", str(init), "--data", str(tiny_data),
                 "--out", str(exp), "--config", str(cfg)]) == 0
    start = read_model_folder(init).encoder.state_dict()
    trained = read_model_folder(exp / "model").encoder.state_dict()
    weights = [k for k, v in start.items() if v.is_floating_point() and "running" not in k]
    assert max((trained[k] - start[k]).abs().max().item() for k in weights) < 1e-4  # two tiny steps from init
    assert read_model_info(exp / "model")["init"] == str(init)
    assert f"encoder initialised from the model folder {init}" in (exp / "train.log").read_text()

    other = _model_folder(tmp_path / "other", channels=32, seed=0)
    rc = main(["train", "--method", "supervised", "--init", str(other), "--data", str(tiny_data),
               "--out", str(tmp_path / "exp2"), "--config", str(cfg)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: {other}: the model folder's encoder (ecapa_tdnn_small: C=32")
    assert "\n" not in err


def test_verify_json_answers_an_error_with_a_json_object(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    model = _model_folder(tmp_path / "model", channels=64, seed=0)
    good = tmp_path / "a.wav"
    sf.write(good, np.zeros(16000, dtype=np.float32), 16000)
    missing = tmp_path / "nope.wav"
    cases = [(["--model", str(model), str(good), str(missing)], str(missing)),
             (["--model", str(tmp_path / "no_model"), str(good), str(good)], str(tmp_path / "no_model")),
             (["--model", str(model), str(good)], None)]  # one file: no file at fault
    for args, file in cases:
        assert main(["verify", "--json", *args]) == 2
        out, err = capsys.readouterr()
        answer = json.loads(out)  # exactly one JSON object on stdout
        assert err.strip() == f"error: {answer['error']}" and "\n" not in answer["error"]
        assert answer.get("file") == file
    assert main(["verify", *cases[0][0]]) == 2 and capsys.readouterr().out == ""  # no --json: stderr only


def test_a_one_class_trial_list_is_a_one_line_error(tiny_data, tmp_path, capsys):
    model = _model_folder(tmp_path / "model", channels=64, seed=0)
    target_only = tmp_path / "target_only"
    target_only.write_text("spk00-u00 spk00-u01 target\nspk01-u00 spk01-u01 target\n")
    nontarget_only = tmp_path / "nontarget_only"
    nontarget_only.write_text("spk00-u00 spk01-u01 nontarget\n")
    for verb, trials, expected in [
            ("eval", target_only, "EER needs target and non-target trials; all 2 are target"),
            ("eval", nontarget_only, "EER needs target and non-target trials; all 1 are non-target"),
            ("calibrate", target_only, "calibration needs target and non-target trials; all 2 are target")]:
        extra = ["--json", str(tmp_path / "r.json")] if verb == "eval" else []
        rc = main([verb, "--model", str(model), "--data", str(tiny_data), "--trials", str(trials),
                   "--device", "cpu", "--workers", "0", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err == f"error: {trials}: {expected}\n"


def test_select_scores_candidates_without_labels_and_names_the_pick(tmp_path, capsys):
    from conftest import write_speaker_dir

    data = write_speaker_dir(tmp_path / "data", n_speakers=4, utts_per_speaker=6, seconds=1.0, visual_dim=8)
    (data / "utt2spk").unlink()  # select never needs labels
    (data / "spk2utt").unlink(missing_ok=True)
    a = _model_folder(tmp_path / "a" / "model", 16, seed=0)
    b = _model_folder(tmp_path / "b", 16, seed=1)
    assert main(["select", str(a), str(b), "--data", str(data), "--json", str(tmp_path / "sel.json"),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    got = json.loads((tmp_path / "sel.json").read_text())
    assert got["criterion"] == "cross_view" and got["pick"] in (str(a), str(b))
    assert set(got["candidates"]) == {str(a), str(b)}
    for row in got["candidates"].values():
        assert set(row) == {"own_clusters", "split", "shared", "cross_channel", "cross_view"} and all(0 <= v <= 1 for v in row.values())
    assert "<- pick" in out and "pick by cross_view" in out
    assert main(["select", str(a), "--data", str(data)]) == 2
    assert "at least two candidate" in capsys.readouterr().err
    assert main(["select", str(a), str(b), "--data", str(data), "--criterion", "bogus"]) == 2
    assert "--criterion: 'bogus' is not one of auto" in capsys.readouterr().err


def test_a_recipe_with_final_select_ships_the_stage_the_criterion_prefers(tmp_path, capsys):
    """``final: select``: the method pipeline scores its trained stages on the training
    recordings without labels and picks the lowest criterion (the same rule as `cdino select`)."""
    from conftest import write_speaker_dir

    from cdino.eval.selection import pick_candidate
    from cdino.pipeline.method import MethodPipeline, load_recipe

    data = write_speaker_dir(tmp_path / "data", n_speakers=4, utts_per_speaker=6, seconds=1.0, visual_dim=8)
    recipe = load_recipe("quick", [f"data.train={data}", "final=select"])
    pipe = MethodPipeline(recipe, tmp_path / "exp")
    for stage, seed in (("dino", 0), ("cdino", 1)):  # two finished stages; the rounds never ran
        _model_folder(tmp_path / "exp" / stage / "model", 16, seed=seed)
    got = pipe._select_final()
    assert set(got["values"]) == {"dino", "cdino"} and got["criterion"] == "cross_view"
    assert got["values"]["dino"]["cross_view"] != got["values"]["cdino"]["cross_view"]  # the pick is a choice
    assert (got["criterion"], got["pick"]) == pick_candidate(got["values"])
    assert f"final: {got['pick']}, picked without labels by cross_view" in capsys.readouterr().out
