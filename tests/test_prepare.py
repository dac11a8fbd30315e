"""Corpus preparation on tiny fake VoxCeleb, MUSAN and RIRS_NOISES trees."""

from __future__ import annotations

import numpy as np
import pytest

from cdino.data.audio import load_audio, write_audio
from cdino.data.kaldi_dir import DataDir, read_scp, read_trials
from cdino.data.prepare import prepare_musan, prepare_rirs, prepare_voxceleb
from cdino.errors import DataError
from conftest import write_m4a

WAVE = np.zeros(160, dtype=np.float32)


def make_files(root, rels):
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".m4a":
            path.write_bytes(b"\x00\x00\x00\x20ftypM4A ")
        else:
            write_audio(path, WAVE)


VOX1 = [f"wav/{spk}/{vid}/{n:05d}.wav" for spk in ("id10270", "id10309", "id10001", "id10310")
        for vid in ("vidA", "vid_B-2") for n in (1, 2)]


def vox2_files(ext, sub):
    return [f"dev/{sub}/{spk}/{vid}/{n:05d}.{ext}" for spk in ("id00012", "id00015")
            for vid in ("v1", "v2") for n in (1, 2, 3)]


def fake_vox1(root):
    make_files(root, VOX1)
    (root / "wav" / "README.txt").write_text("not audio\n")
    (root / "veri_test2.txt").write_text(
        "1 id10270/vidA/00001.wav id10270/vid_B-2/00002.wav\n"
        "0 id10270/vidA/00001.wav id10309/vidA/00002.wav\n"
        "1 id10309/vidA/00001.wav id10309/vid_B-2/00001.wav\n")
    return root


def test_prepare_voxceleb_full(tmp_path):
    vox1 = fake_vox1(tmp_path / "VoxCeleb1")
    vox2 = tmp_path / "VoxCeleb2"
    make_files(vox2, vox2_files("m4a", "aac") + vox2_files("flac", "flac"))
    trials_dir = tmp_path / "lists"
    trials_dir.mkdir()
    (trials_dir / "list_test_hard2.txt").write_text(
        "1 id10001/vidA/00001.wav id10001/vidA/00002.wav\n"
        "0 id10001/vidA/00001.wav id10310/vid_B-2/00001.wav\n")
    out = tmp_path / "data"
    summary = prepare_voxceleb(vox1, vox2, out, trials_dir, progress=False)

    train = DataDir.load(out / "vox2_dev")
    assert len(train) == 12 and summary["vox2_dev"]["speakers"] == 2
    assert train.utt2spk["id00015/v2/00003"] == "id00015"
    path = train.wav["id00012/v1/00001"]
    assert path == str(vox2.resolve() / "dev/flac/id00012/v1/00001.flac")

    vox1_all = DataDir.load(out / "vox1")
    assert len(vox1_all) == 16 and summary["vox1"] == {
        "dir": str(out / "vox1"), "utts": 16, "speakers": 4, "ignored_files": 0,
        "unreadable_headers": 0}
    # lengths from the headers, written once so that training reads none
    assert vox1_all.utt2dur == {u: 0.01 for u in vox1_all.utts}
    assert train.utt2dur == {u: 0.01 for u in train.utts}
    assert "id10270/vid_B-2/00002" in vox1_all.wav
    dev = DataDir.load(out / "vox1_dev")
    assert sorted(set(dev.utt2spk.values())) == ["id10001", "id10310"] and len(dev) == 8

    o = read_trials(out / "vox1" / "trials_O")
    assert o.enroll[0] == "id10270/vidA/00001" and o.labels.tolist() == [1, 0, 1]
    assert (out / "vox1" / "trials_O").read_text().splitlines()[1] == \
        "id10270/vidA/00001 id10309/vidA/00002 nontarget"
    h = read_trials(out / "vox1" / "trials_H")
    assert h.labels.tolist() == [1, 0]
    assert not (out / "vox1" / "trials_E").exists()
    assert set(summary["trials"]) == {"O", "H"}
    assert summary["trials"]["O"]["n_trials"] == 3 and summary["trials"]["O"]["n_target"] == 2
    o.check_utts(vox1_all.wav, out / "vox1")


def test_trial_utterance_missing_from_vox1(tmp_path):
    vox1 = fake_vox1(tmp_path / "vox1")
    with open(vox1 / "veri_test2.txt", "a") as f:
        f.write("1 id10270/vidA/00001.wav id10270/gone/00009.wav\n")
    with pytest.raises(DataError, match=r"veri_test2\.txt:4: utterance 'id10270/gone/00009'"):
        prepare_voxceleb(vox1, None, tmp_path / "out", progress=False)


def test_vox2_as_shipped_in_m4a_needs_no_conversion(tmp_path):
    vox2 = tmp_path / "vox2"
    rels = vox2_files("m4a", "aac")
    for i, rel in enumerate(rels):  # real AAC files, 0.5 s + i * 10 ms each
        write_m4a(vox2 / rel, np.full(8000 + 160 * i, 0.01, np.float32))
    summary = prepare_voxceleb(None, vox2, tmp_path / "out", progress=False)
    assert summary["vox2_dev"]["utts"] == 12 and summary["vox2_dev"]["unreadable_headers"] == 0
    train = DataDir.load(tmp_path / "out" / "vox2_dev")
    assert train.wav["id00015/v2/00003"] == str(vox2.resolve() / "dev/aac/id00015/v2/00003.m4a")
    assert train.utt2spk["id00012/v1/00001"] == "id00012"
    for i, rel in enumerate(rels):  # lengths from the m4a headers: the decoded lengths
        utt = rel.split("/", 2)[2].rsplit(".", 1)[0]
        assert train.utt2dur[utt] == pytest.approx(len(load_audio(vox2 / rel)) / 16000, abs=1e-4)
        assert abs(train.utt2dur[utt] - (8000 + 160 * i) / 16000) < 0.07
    # Partly converted: an utterance with a .wav copy uses it, the others stay m4a.
    make_files(vox2, vox2_files("wav", "wav")[:-2])
    prepare_voxceleb(None, vox2, tmp_path / "out", progress=False)
    train = DataDir.load(tmp_path / "out" / "vox2_dev")
    assert len(train) == 12
    suffixes = [train.wav[u].rsplit(".", 1)[1] for u in train.utts]
    assert suffixes.count("wav") == 10 and suffixes.count("m4a") == 2
    assert train.utts == sorted(train.utts)


def test_prepare_voxceleb_argument_errors(tmp_path):
    with pytest.raises(DataError, match="give a VoxCeleb1 folder"):
        prepare_voxceleb(None, None, tmp_path / "out")
    with pytest.raises(DataError, match=r"nowhere: VoxCeleb1 folder not found"):
        prepare_voxceleb(tmp_path / "nowhere", None, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no VoxCeleb1 audio found"):
        prepare_voxceleb(tmp_path / "empty", None, tmp_path / "out", progress=False)
    vox1 = fake_vox1(tmp_path / "vox1")
    make_files(vox1, ["flac/id10270/vidA/00001.flac"])
    with pytest.raises(DataError, match=r"utterance 'id10270/vidA/00001' found twice"):
        prepare_voxceleb(vox1, None, tmp_path / "out", progress=False)
    (tmp_path / "lists").mkdir()
    with pytest.raises(DataError, match=r"lists: none of the VoxCeleb1 trial lists"):
        prepare_voxceleb(fake_vox1(tmp_path / "v1b"), None, tmp_path / "out",
                         tmp_path / "lists", progress=False)


def test_prepare_musan(tmp_path):
    musan = tmp_path / "musan"
    make_files(musan, ["noise/free-sound/noise-free-sound-0000.wav",
                       "noise/sound-bible/noise-sound-bible-0001.wav",
                       "music/fma/music-fma-0000.wav",
                       "speech/librivox/speech-librivox-0000.wav"])
    (musan / "music" / "fma" / "LICENSE").write_text("x")
    summary = prepare_musan(musan, tmp_path / "out", progress=False)
    assert summary["categories"] == {"noise": 2, "speech": 1, "music": 1}
    wav = read_scp(tmp_path / "out" / "wav.scp")
    cat = read_scp(tmp_path / "out" / "utt2category")
    assert cat["noise/free-sound/noise-free-sound-0000"] == "noise"
    assert cat["music/fma/music-fma-0000"] == "music" and set(cat) == set(wav)
    assert all(p.startswith("/") and p.endswith(".wav") for p in wav.values())
    (tmp_path / "notmusan").mkdir()
    with pytest.raises(DataError, match="no noise/, speech/ or music/ folder"):
        prepare_musan(tmp_path / "notmusan", tmp_path / "out2", progress=False)


def test_prepare_rirs(tmp_path):
    rirs = tmp_path / "RIRS_NOISES"
    make_files(rirs, ["simulated_rirs/smallroom/Room001/Room001-00001.wav",
                      "simulated_rirs/smallroom/Room001/Room001-00002.wav",
                      "simulated_rirs/largeroom/Room010/Room010-00001.wav",
                      "real_rirs_isotropic_noises/RWCP_type1_rir_circle_ane_imp110.wav",
                      "real_rirs_isotropic_noises/RVB2014_type1_noise_largeroom1_1.wav"])
    summary = prepare_rirs(rirs, tmp_path / "sim", progress=False)
    assert summary["utts"] == 3
    assert summary["categories"] == {"smallroom": 2, "largeroom": 1}
    assert "simulated_rirs/largeroom/Room010/Room010-00001" in read_scp(tmp_path / "sim/wav.scp")
    summary = prepare_rirs(rirs, tmp_path / "all", real=True, progress=False)
    wav = read_scp(tmp_path / "all" / "wav.scp")
    assert summary["utts"] == 4 and summary["categories"]["real"] == 1
    assert "real_rirs_isotropic_noises/RWCP_type1_rir_circle_ane_imp110" in wav
    assert not any("noise_largeroom" in u for u in wav)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no smallroom/, mediumroom/ or largeroom/"):
        prepare_rirs(tmp_path / "empty", tmp_path / "x", progress=False)
