"""Tar shards: write, stream back across ranks and workers, survive damaged members."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import soundfile as sf
from torch.utils.data import DataLoader

from cdino.data.audio import write_audio
from cdino.data.kaldi_dir import read_scp, write_data_dir
from cdino.data.shards import ShardDataset, read_shard_list, shard_key, utt_of_key, write_shards
from cdino.errors import DataError


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


def keep(item):
    return item


def read_all(list_path, rank, world_size, workers, **kw):
    ds = ShardDataset(list_path, rank=rank, world_size=world_size, **kw)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=keep)
    return list(loader)


def test_shard_key_round_trip():
    for utt in ["id10270/x6uYqmx31kE/00001", "a%2Fb", "plain-id_1.2"]:
        key = shard_key(utt)
        assert "/" not in key and utt_of_key(key) == utt
    assert shard_key("a/b") != shard_key("a%2Fb")


def test_round_trip_two_ranks_two_workers(corpus, tmp_path):
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

    seen = []
    for rank in range(2):
        items = read_all(out / "shards.list", rank, 2, workers=2, seed=3, epoch=1)
        seen += [item["utt"] for item in items]
        for item in items:
            wave = item["wave"]
            assert isinstance(wave, np.ndarray) and wave.dtype == np.float32
            assert item["spk"] == item["utt"].split("/")[0]
            ref = waves[item["utt"]]
            assert wave.shape == ref.shape
            assert np.max(np.abs(wave - ref)) <= 1 / 32768 + 1e-6
    assert sorted(seen) == sorted(waves)  # every utterance exactly once
    assert ShardDataset(out / "shards.list").num_utts == 13


def test_shard_order_per_epoch_and_buffer(corpus, tmp_path):
    data, waves = corpus
    write_shards(data, tmp_path / "s", shard_mb=0.012, progress=False)
    lst = tmp_path / "s" / "shards.list"
    a, b = ShardDataset(lst, seed=5), ShardDataset(lst, seed=5)
    assert a.shards_for() == b.shards_for()
    orders = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        orders.add(tuple(a.shards_for()))
    assert len(orders) > 1
    assert ShardDataset(lst, shuffle=False).shards_for() == read_shard_list(lst)
    plain = [x["utt"] for x in ShardDataset(lst, shuffle=False)]
    mixed = [x["utt"] for x in ShardDataset(lst, shuffle_buffer=5, seed=1)]
    assert sorted(plain) == sorted(mixed) == sorted(waves) and plain != mixed
    # disjoint and complete split of shards over 3 ranks x 2 workers
    parts = [ShardDataset(lst, rank=r, world_size=3, epoch=2).shards_for(w, 2)
             for r in range(3) for w in range(2)]
    flat = [p for part in parts for p in part]
    assert sorted(flat) == sorted(read_shard_list(lst))


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

    ds = ShardDataset(tmp_path / "s" / "shards.list", shuffle=False)
    got = [x["utt"] for x in ds]
    assert sorted(got) == sorted(set(waves) - bad)
    assert ds.skipped.count == 3
    reasons = " ".join(r for _, r in ds.skipped.items)
    assert "not a readable audio file" in reasons and "bad metadata" in reasons
    assert "incomplete utterance (needs .json and .flac, has json)" in reasons


def test_truncated_shard_keeps_what_was_read(corpus, tmp_path):
    data, waves = corpus
    paths = write_shards(data, tmp_path / "s", shard_mb=0.012, progress=False, shuffle=False)
    with tarfile.open(paths[0]) as tar:
        members = tar.getmembers()
    last = members[-1]
    assert last.name.endswith(".flac") and len(members) >= 4
    raw = paths[0].read_bytes()
    paths[0].write_bytes(raw[: last.offset_data + last.size // 2])  # cut inside the last flac
    ds = ShardDataset(tmp_path / "s" / "shards.list", shuffle=False)
    got = [x["utt"] for x in ds]
    lost = utt_of_key(last.name[: -len(".flac")])
    assert sorted(got) == sorted(set(waves) - {lost})
    assert ds.skipped.count == 1  # the damaged tar (with the utterance cut in it)
    assert "unreadable tar" in ds.skipped.summary()


def test_bad_source_audio_skipped_when_writing(corpus, tmp_path):
    data, waves = corpus
    (tmp_path / "audio" / "3.flac").write_text("this is not flac")
    write_shards(data, tmp_path / "s", shard_mb=1, progress=False)
    skipped = (tmp_path / "s" / "skipped.tsv").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].split("\t")[0].endswith("3.flac")
    got = {x["utt"] for x in ShardDataset(tmp_path / "s" / "shards.list")}
    assert got == set(waves) - {"spk0/video/00003"}


def test_shard_list_errors(tmp_path):
    (tmp_path / "shards.list").write_text("shard-000000.tar\n")
    with pytest.raises(DataError, match=r"shards\.list:1: shard 'shard-000000\.tar' not found"):
        ShardDataset(tmp_path / "shards.list")
    (tmp_path / "shard-000000.tar").write_bytes(b"")
    (tmp_path / "shards.list").write_text("shard-000000.tar\n\nshard-000000.tar\n")
    with pytest.raises(DataError, match=r"shards\.list:3: shard .* listed twice"):
        ShardDataset(tmp_path / "shards.list")
    (tmp_path / "shards.list").write_text("\n")
    with pytest.raises(DataError, match="no shards listed"):
        ShardDataset(tmp_path / "shards.list")
    with pytest.raises(ValueError, match="rank"):
        ShardDataset(tmp_path / "x", rank=2, world_size=2)
