"""The `cdino` command line: help, one-line errors, train → eval → verify → export."""

from __future__ import annotations

import json
import subprocess
import sys

from cdino.cli import main
from conftest import write_trials_for

VERBS = ["demo", "run", "corpus", "prepare", "train", "embed", "eval", "verify", "export"]


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
    assert len((tmp_path / "scores").read_text().splitlines()) == res["n_trials"]
    assert list((tmp_path / "plots").glob("*.png"))
    capsys.readouterr()
    wavs = sorted((tiny_data / "wav").glob("*.wav"))
    assert main(["verify", "--model", str(model), str(wavs[0]), str(wavs[1])]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    parts = dict(kv.split("=") for kv in line.split())
    assert set(parts) == {"score", "threshold", "decision"} and parts["decision"] in ("same", "different")
    assert main(["export", "--model", str(model), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 10000
