"""Data folders and trial lists: happy paths and every malformed input, named by file:line."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cdino.data.kaldi_dir import DataDir, Trials, read_scp, read_trials, read_visual, \
    utt_id_from_path, write_data_dir, write_scp, write_trials
from cdino.errors import DataError


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_read_scp_order_blank_lines_and_spaces(tmp_path):
    p = write(tmp_path / "wav.scp", "b /x/b.wav\n\n  a   some dir/with space.wav  \nc c.flac\n")
    assert read_scp(p) == {"b": "/x/b.wav", "a": "some dir/with space.wav", "c": "c.flac"}
    assert list(read_scp(p)) == ["b", "a", "c"]


@pytest.mark.parametrize("text, pattern", [
    ("u1 a.wav\nu2 b.wav\nu1 c.wav\n", r"wav\.scp:3: duplicate key 'u1' \(first on line 1\)"),
    ("u1 a.wav\nu2\n", r"wav\.scp:2: key 'u2' has no value"),
])
def test_read_scp_errors_name_file_and_line(tmp_path, text, pattern):
    with pytest.raises(DataError, match=pattern):
        read_scp(write(tmp_path / "wav.scp", text))


def test_read_scp_missing_and_binary(tmp_path):
    with pytest.raises(DataError, match=r"wav\.scp: not found"):
        read_scp(tmp_path / "wav.scp")
    (tmp_path / "utt2spk").write_bytes(b"u1 s1\nu2 \xff\xfe\x00\n")
    with pytest.raises(DataError, match=r"utt2spk:2: not UTF-8"):
        read_scp(tmp_path / "utt2spk", what="utt2spk")


def test_write_scp_round_trip_atomic(tmp_path):
    mapping = {"spk1/u1": "/a/b c.wav", "u2": "x.flac"}
    write_scp(tmp_path / "d" / "wav.scp", mapping)
    assert read_scp(tmp_path / "d" / "wav.scp") == mapping
    assert os.listdir(tmp_path / "d") == ["wav.scp"]
    with pytest.raises(DataError, match="contains whitespace"):
        write_scp(tmp_path / "bad.scp", {"has space": "x"})


def test_data_dir_load_resolves_relative_paths(tmp_path):
    d = tmp_path / "data" / "train"
    write(d / "wav.scp", "u1 audio/u1.wav\nu2 /abs/u2.wav\nu3 ../shared/u3.wav\n")
    write(d / "utt2spk", "u1 s2\nu2 s1\nu3 s2\n")
    write(d / "spk2utt", "s1 u2\ns2 u1 u3\n")
    write(d / "utt2dur", "u1 1.5\nu2 2\nu3 0.25\n")
    data = DataDir.load(d)
    assert data.root == d.resolve() and data.utts == ["u1", "u2", "u3"] and len(data) == 3
    assert data.wav["u1"] == str(d.resolve() / "audio" / "u1.wav")
    assert data.wav["u2"] == "/abs/u2.wav"
    assert data.wav["u3"] == str(tmp_path.resolve() / "data" / "shared" / "u3.wav")
    assert data.spk2utt == {"s2": ["u1", "u3"], "s1": ["u2"]}
    labels, speakers = data.speaker_labels()
    assert speakers == ["s1", "s2"] and labels.dtype == np.int64
    assert labels.tolist() == [1, 0, 1]
    labels, speakers = data.speaker_labels(["u3", "u1"])
    assert speakers == ["s2"] and labels.tolist() == [0, 0]
    assert data.utt2dur == {"u1": 1.5, "u2": 2.0, "u3": 0.25}
    sub = data.subset(["u3", "u2"])
    assert sub.utts == ["u3", "u2"] and sub.utt2spk == {"u3": "s2", "u2": "s1"}


def test_data_dir_without_speakers_and_from_spk2utt_only(tmp_path):
    write(tmp_path / "a" / "wav.scp", "u1 x.wav\n")
    a = DataDir.load(tmp_path / "a")
    assert a.utt2spk is None and a.spk2utt is None
    with pytest.raises(DataError, match="no utt2spk"):
        a.speaker_labels()
    write(tmp_path / "b" / "wav.scp", "u1 x.wav\nu2 y.wav\n")
    write(tmp_path / "b" / "spk2utt", "sA u2 u1\n")
    assert DataDir.load(tmp_path / "b").utt2spk == {"u1": "sA", "u2": "sA"}


@pytest.mark.parametrize("files, pattern", [
    ({}, r"data folder not found"),
    ({"wav.scp": "\n\n"}, r"wav\.scp: empty"),
    ({"wav.scp": "spk1-u1 a.wav\nspk1-u2 b.wav\nspk1-u2 c.wav\n"},
     r"wav\.scp:3: duplicate utterance id 'spk1-u2'"),
    ({"wav.scp": "u1 sox a.wav -t wav - |\n"}, r"wav\.scp:1: piped commands"),
    ({"wav.scp": "u1 a.wav\n", "segments": "s u1 0 1\n"}, r"segments files are not supported"),
    ({"wav.scp": "u1 a.wav\n", "utt2spk": "u1 s1\nu9 s1\n"},
     r"utt2spk:2: utterance 'u9' is not in wav\.scp"),
    ({"wav.scp": "u1 a.wav\nu2 b.wav\n", "utt2spk": "u1 s1\n"},
     r"utt2spk: no speaker for utterance 'u2'"),
    ({"wav.scp": "u1 a.wav\n", "utt2spk": "u1 s1 s2\n"}, r"utt2spk:1: expected 'utt speaker'"),
    ({"wav.scp": "u1 a.wav\nu2 b.wav\n", "utt2spk": "u1 s1\nu2 s1\nu1 s2\n"},
     r"utt2spk:3: duplicate utterance id 'u1'"),
    ({"wav.scp": "u1 a.wav\nu2 b.wav\n", "utt2spk": "u1 s1\nu2 s2\n", "spk2utt": "s1 u1 u2\n"},
     r"spk2utt:1: utterance 'u2' is under speaker 's1' but utt2spk says 's2'"),
    ({"wav.scp": "u1 a.wav\nu2 b.wav\n", "utt2spk": "u1 s1\nu2 s2\n", "spk2utt": "s1 u1\n"},
     r"spk2utt: utterance 'u2' of wav\.scp is not listed"),
    ({"wav.scp": "u1 a.wav\n", "spk2utt": "s1 u1\ns2 u1\n"},
     r"spk2utt:2: utterance 'u1' is listed twice \(also on line 1\)"),
    ({"wav.scp": "u1 a.wav\n", "utt2dur": "u1 abc\n"}, r"utt2dur:1: duration 'abc'"),
    ({"wav.scp": "u1 a.wav\n", "utt2dur": "u1 -1\n"}, r"utt2dur:1: duration '-1'"),
    ({"wav.scp": "u1 a.wav\n", "utt2dur": "u1 1.0\nu9 2.0\n"},
     r"utt2dur:2: utterance 'u9' is not in wav\.scp"),
    ({"wav.scp": "u1 a.wav\n", "utt2dur": "u1 1.0\n\nu1 2.0\n"},
     r"utt2dur:3: duplicate utterance id 'u1' \(first on line 1\)"),
    ({"wav.scp": "u1 a.wav\n", "utt2dur": "u1 1.0 s\n"}, r"utt2dur:1: expected 'utt seconds'"),
])
def test_data_dir_errors(tmp_path, files, pattern):
    d = tmp_path / "data"
    for name, text in files.items():
        write(d / name, text)
    with pytest.raises(DataError, match=pattern) as err:
        DataDir.load(d)
    assert "\n" not in str(err.value)


def test_write_data_dir_round_trip(tmp_path):
    wav = {"s1/u1": "/a/1.wav", "s2/u2": "/a/2.wav", "s1/u3": "/a/3.wav"}
    spk = {"s1/u1": "s1", "s2/u2": "s2", "s1/u3": "s1"}
    out = write_data_dir(tmp_path / "d", wav, spk, utt2dur={u: 1.0 for u in wav})
    assert read_scp(out / "spk2utt") == {"s1": "s1/u1 s1/u3", "s2": "s2/u2"}
    data = DataDir.load(out)
    assert data.wav == wav and data.utt2spk == spk and data.utt2dur["s2/u2"] == 1.0
    write_data_dir(out, {"x": "/x.wav"})  # rewriting without speakers drops the old lists
    assert DataDir.load(out).utt2spk is None and not (out / "spk2utt").exists()
    with pytest.raises(DataError, match="only one of wav.scp and utt2spk"):
        write_data_dir(tmp_path / "e", wav, {"s1/u1": "s1"})


def test_utt_id_from_path():
    assert utt_id_from_path("id10270/x6uYqmx31kE/00001.wav") == "id10270/x6uYqmx31kE/00001"
    assert utt_id_from_path("id00012/abc/00002.m4a") == "id00012/abc/00002"
    assert utt_id_from_path("a/b.FLAC") == "a/b"
    assert utt_id_from_path("plain-id") == "plain-id"


def test_read_trials_both_forms_mixed(tmp_path):
    p = write(tmp_path / "trials", "\n".join([
        "1 id10270/v1/00001.wav id10270/v2/00003.wav",
        "0 id10270/v1/00001.wav id10300/v9/00001.wav",
        "",
        "e1 t1 target",
        "e2 t2 nontarget",
    ]) + "\n")
    trials = read_trials(p)
    assert len(trials) == 4 and trials.path == p
    assert trials.enroll == ["id10270/v1/00001", "id10270/v1/00001", "e1", "e2"]
    assert trials.test == ["id10270/v2/00003", "id10300/v9/00001", "t1", "t2"]
    assert trials.labels.dtype == np.int8 and trials.labels.tolist() == [1, 0, 1, 0]
    assert trials.lines.tolist() == [1, 2, 4, 5]
    assert trials.utts[:3] == ["id10270/v1/00001", "id10270/v2/00003", "id10300/v9/00001"]


@pytest.mark.parametrize("text, pattern", [
    ("a b target\na b\n", r"trials:2: expected 'enroll test target\|nontarget' or '1\|0 enroll"),
    ("a b target\n\na b c d\n", r"trials:3: expected"),
    ("a b maybe\n", r"trials:1: expected .* got 'a b maybe'"),
    ("2 a b\n", r"trials:1: expected"),
    ("\n\n", r"trials: no trials"),
])
def test_read_trials_malformed(tmp_path, text, pattern):
    with pytest.raises(DataError, match=pattern):
        read_trials(write(tmp_path / "trials", text))


def test_write_trials_and_check_utts(tmp_path):
    trials = Trials(["a", "b"], ["c", "a"], np.array([0, 1], np.int8))
    write_trials(tmp_path / "t", trials)
    assert (tmp_path / "t").read_text() == "a c nontarget\nb a target\n"
    back = read_trials(tmp_path / "t")
    assert back.enroll == trials.enroll and back.labels.tolist() == [0, 1]
    back.check_utts({"a", "b", "c"}, "data/test")
    with pytest.raises(DataError, match=r"t:2: utterance 'b' is not in data/test"):
        back.check_utts({"a", "c"}, "data/test")


def test_read_visual(tmp_path):
    assert read_visual(tmp_path) is None
    emb = np.arange(6, dtype=np.float64).reshape(3, 2)
    np.save(tmp_path / "visual.npy", emb)
    write(tmp_path / "visual_utts.txt", "u1\nu2\nu3\n")
    utts, got = read_visual(tmp_path)
    assert utts == ["u1", "u2", "u3"] and got.dtype == np.float32
    np.testing.assert_array_equal(got, emb)
    with pytest.raises(DataError, match=r"visual_utts\.txt:2: utterance 'u2' is not in"):
        read_visual(tmp_path, known={"u1", "u3"})
    write(tmp_path / "visual_utts.txt", "u1\nu2\n")
    with pytest.raises(DataError, match="3 rows but visual_utts.txt lists 2"):
        read_visual(tmp_path)
    write(tmp_path / "visual_utts.txt", "u1\nu2\nu1\n")
    with pytest.raises(DataError, match=r"visual_utts\.txt:3: duplicate utterance id 'u1'"):
        read_visual(tmp_path)
    emb[1, 0] = np.nan
    np.save(tmp_path / "visual.npy", emb)
    write(tmp_path / "visual_utts.txt", "u1\nu2\nu3\n")
    with pytest.raises(DataError, match=r"row 1 \(utterance 'u2'\) has NaN"):
        read_visual(tmp_path)
    (tmp_path / "visual.npy").unlink()
    with pytest.raises(DataError, match=r"visual\.npy: not found"):
        read_visual(tmp_path)
