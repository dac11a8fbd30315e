"""Bad input, table-driven: each case a one-line error naming the file/line/key and exit 2,
or — where a long run must go on — a skip that is counted and listed. A failed run never
overwrites an earlier result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from cdino.cli import main
from conftest import make_voice, write_speaker_dir, write_trials_for

TRAIN_YAML = ("encoder: {name: ecapa_tdnn_small}\n"
              "trainer: {epochs: 1, global_batch: 8, progress: false, tensorboard: false, threads: 1}\n"
              "optim: {name: adamw, lr: 0.001, lr_scale_with_batch: false, warmup_epochs: 0.2}\n"
              "dino: {out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, global_seconds: 0.6, "
              "local_seconds: 0.3, n_local: 2}\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data folder, trials, a trained model folder and a good eval result."""
    root = tmp_path_factory.mktemp("bad")
    data = write_speaker_dir(root / "data", 3, 4, 1.0)
    trials = write_trials_for(data, root / "trials", n=30)
    cfg = root / "c.yaml"
    cfg.write_text(TRAIN_YAML)
    assert main(["train", "--method", "dino", "--data", str(data), "--out", str(root / "exp"),
                 "--config", str(cfg)]) == 0
    return {"root": root, "data": data, "trials": trials, "model": root / "exp" / "model", "cfg": cfg}


def _copy_data(world, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(world["data"], dst)
    return dst


def _eval(world, tmp_path, data=None, trials=None, model=None):
    return ["eval", "--model", str(model or world["model"]), "--data", str(data or world["data"]),
            "--trials", str(trials or world["trials"]), "--json", str(tmp_path / "out.json"), "--device", "cpu"]


def _audio_case(kind):
    def make(world, tmp_path):
        data = _copy_data(world, tmp_path)
        first = sorted((data / "wav").glob("*.wav"))[0]
        if kind == "missing":
            first.unlink()
        elif kind == "zero":
            first.write_bytes(b"")
        elif kind == "truncated":
            first.write_bytes(first.read_bytes()[:300])
        elif kind == "not_audio":
            first.write_text("this is not audio\n" * 50)
        return _eval(world, tmp_path, data=data), first.name
    return make


def _dup_ids(world, tmp_path):
    data = _copy_data(world, tmp_path)
    lines = (data / "wav.scp").read_text().splitlines()
    (data / "wav.scp").write_text("\n".join(lines + [lines[0]]) + "\n")
    return _eval(world, tmp_path, data=data), "wav.scp:"


def _trials_unknown(world, tmp_path):
    t = tmp_path / "trials"
    t.write_text(world["trials"].read_text() + "spk00-u00 nobody-u99 target\n")
    return _eval(world, tmp_path, trials=t), "nobody-u99"


def _trials_malformed(world, tmp_path):
    t = tmp_path / "trials"
    t.write_text(world["trials"].read_text() + "spk00-u00 spk00-u01 maybe\n")
    return _eval(world, tmp_path, trials=t), "trials:31"


def _empty_data(world, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "wav.scp").write_text("")
    return ["train", "--method", "dino", "--data", str(d), "--out", str(tmp_path / "e"),
            "--config", str(world["cfg"])], "wav.scp"


def _config(text, needle):
    def make(world, tmp_path):
        c = tmp_path / "bad.yaml"
        c.write_text(text)
        return ["train", "--method", "dino", "--data", str(world["data"]), "--out", str(tmp_path / "e"),
                "--config", str(c)], needle
    return make


def _model_version(world, tmp_path):
    m = tmp_path / "model"
    shutil.copytree(world["model"], m)
    cfg = yaml.safe_load((m / "config.yaml").read_text())
    cfg["format_version"] = 99
    (m / "config.yaml").write_text(yaml.safe_dump(cfg))
    return _eval(world, tmp_path, model=m), "format_version"


def _model_corrupt(world, tmp_path):
    m = tmp_path / "model"
    shutil.copytree(world["model"], m)
    (m / "encoder.safetensors").write_bytes(b"\x00" * 64)
    return _eval(world, tmp_path, model=m), "encoder.safetensors"


ERROR_CASES = {
    "missing file": _audio_case("missing"),
    "zero-length file": _audio_case("zero"),
    "truncated wav": _audio_case("truncated"),
    "non-audio file": _audio_case("not_audio"),
    "duplicate utterance ids": _dup_ids,
    "trials name an unknown utterance": _trials_unknown,
    "malformed trials line": _trials_malformed,
    "empty data folder": _empty_data,
    "unknown config key": _config("trainer: {epocs: 2}\n", "trainer.epocs"),
    "wrong type in config": _config("trainer: {epochs: many}\n", "trainer.epochs"),
    "model folder of another version": _model_version,
    "corrupt weight file": _model_corrupt,
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_gets_one_line_error(case, world, tmp_path, capsys):
    argv, needle = ERROR_CASES[case](world, tmp_path)
    previous = tmp_path / "out.json"
    previous.write_text('{"eer": 0.123}')  # an earlier result that must survive
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert needle in err, err
    assert json.loads(previous.read_text()) == {"eer": 0.123}


@pytest.mark.parametrize("rate,channels", [(8000, 1), (44100, 1), (16000, 2)])
def test_other_rates_and_stereo_are_converted(rate, channels, world, tmp_path, capsys):
    wave = make_voice(np.random.default_rng(1), 120, [600, 1600, 2600], 1.0, sr=rate)
    if channels == 2:
        wave = np.stack([wave, 0.5 * wave], axis=1)
    path = tmp_path / "x.wav"
    sf.write(path, wave, rate)
    ref = sorted((world["data"] / "wav").glob("*.wav"))[0]
    assert main(["verify", "--model", str(world["model"]), str(path), str(ref)]) == 0
    assert "score=" in capsys.readouterr().out


def test_training_skips_and_lists_bad_files(world, tmp_path):
    data = _copy_data(world, tmp_path)
    (data / "utt2dur").unlink()  # lengths cached by the first training: stale once files change
    bad = sorted((data / "wav").glob("*.wav"))
    bad[0].write_bytes(b"")
    bad[1].write_text("not audio")
    short = bad[2]
    sf.write(short, np.zeros(800, np.float32), 16000)  # 0.05 s: shorter than any crop
    out = tmp_path / "exp"
    assert main(["train", "--method", "dino", "--data", str(data), "--out", str(out),
                 "--config", str(world["cfg"])]) == 0
    listed = (out / "skipped.tsv").read_text().splitlines()
    assert len(listed) == 3 and all(any(p.name in l for l in listed) for p in bad[:3])
    assert "3 files skipped" in (out / "train.log").read_text()


def test_unwritable_output_folder_fails_before_work(world, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc = main(["train", "--method", "dino", "--data", str(world["data"]), "--out", str(blocker / "exp"),
               "--config", str(world["cfg"])])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and "a-file" in err


def test_disk_full_stops_with_last_checkpoint_intact(world, tmp_path, monkeypatch, capsys):
    from cdino.train import checkpoint as ckpt

    real_replace = ckpt.os.replace
    calls = {"n": 0}

    def full_disk(src, dst):
        calls["n"] += "step-" in str(dst)
        if calls["n"] >= 2:  # the first checkpoint lands, the second finds the disk full
            raise OSError(28, "No space left on device", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", full_disk)
    out = tmp_path / "exp"
    rc = main(["train", "--method", "dino", "--data", str(world["data"]), "--out", str(out),
               "--config", str(world["cfg"]), "--set", "trainer.epochs=2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "No space left on device" in err and "previous checkpoint is intact" in err
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    found = ckpt.latest_checkpoint(out / "checkpoints")
    assert found is not None and found[1]["step"] > 0
    assert not list((out / "checkpoints").glob(".step-*.tmp-*"))
