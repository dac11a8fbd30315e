"""Tar shards: write, index, read back as a training store, survive damaged members."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import soundfile as sf

from cdino.data.audio import write_audio
from cdino.data.kaldi_dir import DataDir, read_scp, write_data_dir
from cdino.data.stores import DataConfig, ShardStore, open_store
from cdino.data.shard_index import INDEX_NAME, build_shard_index, load_shard_index, read_shard_list, shard_key, \
    utt_of_key
from cdino.data.shards import write_shards
from cdino.errors import AudioError, DataError


@pytest.fixture()
def corpus(tmp_path):
    """12 utterances of 3 speakers with '/' in their ids; one file at 8 kHz."""
    rng = np.random.default_rng(0)
    wav, spk, waves = {}, {}, {}
    for i in range(12):
        utt = f"spk{i % 3}/video/{i:05d}"
        wave = (0.3 * rng.standard_normal(800 + 100 * i)).clip(-1, 1).astype(np.float32)
        path = tmp_path / "audio" / f"{i}.flac"
        write_audio(path, wave)
        wav[utt], spk[utt], waves[utt] = str(path), f"spk{i % 3}", wave
    sf.write(tmp_path / "audio" / "low.wav", np.zeros(400, np.float32), 8000, subtype="PCM_16")
    wav["spk0/low"], spk["spk0/low"], waves["spk0/low"] = \
        str(tmp_path / "audio" / "low.wav"), "spk0", np.zeros(800, np.float32)
    write_data_dir(tmp_path / "data", wav, spk)
    return tmp_path / "data", waves


def read_all(folder, **kw):
    """Every utterance of a shard folder, whole, through its store: {utt: wave}."""
    store = ShardStore(folder, min_seconds=0.0, **kw)
    return {u: store.read(i, 0, store.num_samples(i)) for i, u in enumerate(store.utts)}, store


def test_shard_key_round_trip():
    for utt in ["id10270/x6uYqmx31kE/00001", "a%2Fb", "plain-id_1.2"]:
        key = shard_key(utt)
        assert "/" not in key and utt_of_key(key) == utt
    assert shard_key("a/b") != shard_key("a%2Fb")


def test_round_trip_through_the_shard_store(corpus, tmp_path):
    data, waves = corpus
    out = tmp_path / "shards"
    paths = write_shards(data, out, shard_mb=0.012, progress=False)
    assert len(paths) >= 4 and all(p.name.startswith("shard-") for p in paths)
    assert (out / "shards.list").read_text().split() == [p.name for p in paths]
    assert read_shard_list(out / "shards.list") == paths
    assert len(read_scp(out / "utt2shard")) == 13
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
    assert names[0].endswith(".json") and names[1].endswith(".flac") and "/" not in names[0]

    # the shard folder (or its list) loads like a data folder, in the source folder's order
    src = DataDir.load(data)
    for given in (out, out / "shards.list"):
        shard_dir = DataDir.load(given)
        assert shard_dir.utts == src.utts and shard_dir.utt2spk == src.utt2spk
        assert shard_dir.shards is not None and len(shard_dir.wav) == 13
    # the index knows where each flac lies: the tar headers agree
    index = load_shard_index(out / "shards.list")
    for shard_no, path in enumerate(paths):
        with tarfile.open(path) as tar:
            flacs = {utt_of_key(m.name[:-5]): (m.offset_data, m.size) for m in tar if m.name.endswith(".flac")}
        for i in np.flatnonzero(index.shard == shard_no):
            assert flacs[index.utts[i]] == (index.offset[i], index.size[i])
    got, store = read_all(out)
    assert sorted(got) == sorted(waves)
    for utt, wave in got.items():
        assert wave.dtype == np.float32 and wave.shape == waves[utt].shape
        assert np.max(np.abs(wave - waves[utt])) <= 1 / 32768 + 1e-6
        i = store.utts.index(utt)
        assert store.num_samples(i) == len(waves[utt])
        part = store.read(i, 100, 300)  # a crop decodes only that part
        np.testing.assert_array_equal(part, wave[100:400])
    assert store.name(0) == f"{paths[index.shard[0]]}:{store.utts[0]}"
    # the store opened for training: the default store, too-short utterances listed
    trained = open_store(DataDir.load(out), DataConfig(min_seconds=0.07), progress=False)
    assert isinstance(trained, ShardStore) and trained.skipped.count == 5  # 800..1100 samples
    assert all("too short" in r for _, r in trained.skipped.items)
    memory = open_store(DataDir.load(out), DataConfig(store="memory", min_seconds=0.0), progress=False)
    for i, utt in enumerate(memory.utts):
        np.testing.assert_array_equal(memory.read(i, 0, memory.num_samples(i)), got[utt])


def test_index_is_rebuilt_from_tar_headers_when_missing_or_stale(corpus, tmp_path):
    data, waves = corpus
    out = tmp_path / "s"
    write_shards(data, out, shard_mb=0.012, progress=False)
    written = load_shard_index(out / "shards.list")
    (out / INDEX_NAME).unlink()
    scanned = load_shard_index(out / "shards.list")
    assert (out / INDEX_NAME).is_file()  # cached for the next start
    rows = lambda ix: sorted(zip(ix.utts, ix.spks, ix.shard.tolist(), ix.offset.tolist(),
                                 ix.size.tolist(), ix.samples.tolist()))
    assert rows(scanned) == rows(written) and not scanned.skipped
    assert load_shard_index(out / "shards.list").utts == scanned.utts  # read back as written
    # a shard that changed size makes the index stale: indexed again
    first = read_shard_list(out / "shards.list")[0]
    with tarfile.open(first) as tar:
        dropped = next(m for m in tar.getnames() if m.endswith(".json"))
    rewrite_tar(first, lambda n, d: None if n == dropped else (n, d))
    again = load_shard_index(out / "shards.list")
    assert len(again) == 12 and "incomplete utterance" in again.skipped[0][1]
    (out / INDEX_NAME).write_text("#cdino-shard-index\t1\n" + "".join(
        f"#shard\t{p.name}\t{p.stat().st_size}\n" for p in read_shard_list(out / "shards.list"))
        + "u1\t0\t512\n")
    with pytest.raises(DataError, match=r"shards\.index:\d+: expected 'utt shard offset size samples spk'"):
        DataDir.load(out)


def rewrite_tar(path, change):
    """Copy a tar's members through ``change(name, data) -> (name, data) | None``."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            new = change(name, data)
            if new is not None:
                info = tarfile.TarInfo(new[0])
                info.size = len(new[1])
                tar.addfile(info, io.BytesIO(new[1]))
    return members


def test_corrupt_and_missing_members_are_skipped_and_counted(corpus, tmp_path):
    data, waves = corpus
    paths = write_shards(data, tmp_path / "s", shard_mb=0.012, progress=False, shuffle=False)
    keys0 = [n[:-5] for n, _ in rewrite_tar(paths[0], lambda n, d: (n, d)) if n.endswith(".json")]
    keys1 = [n[:-5] for n, _ in rewrite_tar(paths[1], lambda n, d: (n, d)) if n.endswith(".json")]
    assert len(keys1) >= 2
    rewrite_tar(paths[0], lambda n, d: (n, b"not flac" * 20) if n == keys0[0] + ".flac" else (n, d))
    rewrite_tar(paths[1], lambda n, d: None if n == keys1[0] + ".flac"
                else (n, b"{broken") if n == keys1[1] + ".json" else (n, d))
    bad = {utt_of_key(keys0[0]), utt_of_key(keys1[0]), utt_of_key(keys1[1])}

    got, store = read_all(tmp_path / "s")
    assert sorted(got) == sorted(set(waves) - bad)
    assert store.skipped.count == 3
    reasons = " ".join(r for _, r in store.skipped.items)
    assert "not a readable audio file" in reasons and "bad metadata" in reasons
    assert "incomplete utterance (needs .json and .flac, has json)" in reasons


def test_member_damaged_after_indexing_fails_its_read_only(corpus, tmp_path):
    data, waves = corpus
    paths = write_shards(data, tmp_path / "s", shard_mb=1, progress=False, shuffle=False)
    store = ShardStore(tmp_path / "s", min_seconds=0.0)
    with tarfile.open(paths[0]) as tar:
        victim = next(m for m in tar if m.name.endswith(".flac"))
    raw = bytearray(paths[0].read_bytes())
    raw[victim.offset_data:victim.offset_data + victim.size] = b"\x00" * victim.size  # same size
    paths[0].write_bytes(bytes(raw))
    i = store.utts.index(utt_of_key(victim.name[:-5]))
    with pytest.raises(AudioError, match=rf"{paths[0]}:.*not a readable audio file"):
        store.read(i, 0, 100)
    j = (i + 1) % len(store)
    assert len(store.read(j, 0, 100)) == 100


def test_truncated_shard_keeps_what_was_read(corpus, tmp_path):
    data, waves = corpus
    paths = write_shards(data, tmp_path / "s", shard_mb=0.012, progress=False, shuffle=False)
    with tarfile.open(paths[0]) as tar:
        members = tar.getmembers()
    last = members[-1]
    assert last.name.endswith(".flac") and len(members) >= 4
    raw = paths[0].read_bytes()
    paths[0].write_bytes(raw[: last.offset_data + last.size // 2])  # cut inside the last flac
    got, store = read_all(tmp_path / "s")
    lost = utt_of_key(last.name[: -len(".flac")])
    assert sorted(got) == sorted(set(waves) - {lost})
    assert store.skipped.count == 1  # the utterance cut off with the end of the tar
    assert "truncated" in store.skipped.summary()


def test_bad_source_audio_skipped_when_writing(corpus, tmp_path):
    data, waves = corpus
    (tmp_path / "audio" / "3.flac").write_text("this is not flac")
    write_shards(data, tmp_path / "s", shard_mb=1, progress=False)
    skipped = (tmp_path / "s" / "skipped.tsv").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].split("\t")[0].endswith("3.flac")
    assert set(DataDir.load(tmp_path / "s").utts) == set(waves) - {"spk0/video/00003"}


def test_shard_list_errors(tmp_path):
    (tmp_path / "shards.list").write_text("shard-000000.tar\n")
    with pytest.raises(DataError, match=r"shards\.list:1: shard 'shard-000000\.tar' not found"):
        DataDir.load(tmp_path)
    (tmp_path / "shard-000000.tar").write_bytes(b"")
    (tmp_path / "shards.list").write_text("shard-000000.tar\n\nshard-000000.tar\n")
    with pytest.raises(DataError, match=r"shards\.list:3: shard .* listed twice"):
        DataDir.load(tmp_path / "shards.list")
    (tmp_path / "shards.list").write_text("\n")
    with pytest.raises(DataError, match="no shards listed"):
        DataDir.load(tmp_path)
    (tmp_path / "shards.list").write_text("shard-000000.tar\n")
    with pytest.raises(DataError, match="no readable utterance in the shards"):
        build_shard_index(tmp_path / "shards.list")
    with pytest.raises(DataError, match="not a shard folder"):
        ShardStore(DataDir(root=tmp_path, utts=["u"], wav={"u": "x.wav"}))
