"""Data at scale: lengths from utt2dur, one loader per run, bad files inside workers,
training from tar shards (same crops as the data folder, exact resume)."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

import cdino.data.loader as loader_mod
import cdino.data.stores as stores_mod
from cdino.config import load_config
from cdino.data.kaldi_dir import DataDir, format_seconds
from cdino.data.loader import GlobalBatchSampler, MultiCropDataset
from cdino.data.stores import FileStore, MemoryStore
from cdino.data.shards import write_shards
from cdino.methods.dino import DinoMethod
from cdino.train import checkpoint as ckpt
from cdino.train.trainer import TrainConfig, Trainer
from conftest import StopAt, stop_after_step

TINY = {
    "encoder": {"name": "ecapa_tdnn_small"},
    "trainer": {"epochs": 2, "global_batch": 8, "log_every": 1, "progress": False, "tensorboard": False,
                "threads": 1},
    "optim": {"name": "adamw", "lr": 0.001, "lr_scale_with_batch": False, "warmup_epochs": 0.5},
    "dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "global_seconds": 0.6,
             "local_seconds": 0.3, "n_local": 2},
    "augment": {"reverb_prob": 0.3, "noise_prob": 0.3},
}


def tiny_cfg(num_workers: int = 0, **trainer) -> TrainConfig:
    cfg = load_config(TrainConfig, TINY)
    return replace(cfg, data=replace(cfg.data, num_workers=num_workers),
                   trainer=replace(cfg.trainer, **trainer))


def weights(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.student.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def header_length(path: str) -> int:
    return sf.info(path).frames


# ----------------------------------------------------------------------- utt2dur


def test_lengths_are_measured_once_cached_in_utt2dur_and_trusted(tiny_data, monkeypatch):
    data = DataDir.load(tiny_data)
    assert data.utt2dur is None and not (tiny_data / "utt2dur").exists()
    store = FileStore(data, progress=False)
    assert store.lengths.tolist() == [header_length(data.wav[u]) for u in store.utts]
    cached = DataDir.load(tiny_data)
    assert [round(cached.utt2dur[u] * 16000) for u in store.utts] == store.lengths.tolist()

    calls = []
    real = stores_mod.probe_lengths
    monkeypatch.setattr(stores_mod, "probe_lengths", lambda paths, **kw: calls.append(list(paths)) or real(paths, **kw))
    again = FileStore(DataDir.load(tiny_data), progress=False)
    assert calls == [] and again.lengths.tolist() == store.lengths.tolist()  # no header read

    # a partial utt2dur: only the missing utterances are measured, then the cache is whole
    lines = (tiny_data / "utt2dur").read_text().splitlines()
    (tiny_data / "utt2dur").write_text("\n".join(lines[2:]) + "\n")
    third = FileStore(DataDir.load(tiny_data), progress=False)
    assert calls == [[data.wav[u] for u in data.utts[:2]]]
    assert third.lengths.tolist() == store.lengths.tolist()
    assert (tiny_data / "utt2dur").read_text().splitlines() == lines


def test_unwritable_folder_keeps_lengths_in_memory_with_a_warning(tiny_data, caplog):
    (tiny_data / f".utt2dur.tmp-{os.getpid()}").mkdir()  # the cache's temporary file cannot be made
    with caplog.at_level(logging.WARNING, logger="cdino.data.loader"):
        store = FileStore(DataDir.load(tiny_data), progress=False)
    assert "cannot write the utterance lengths" in caplog.text
    assert not (tiny_data / "utt2dur").exists() and len(store) == 24


def test_bad_and_short_files_are_skipped_listed_and_not_cached(tiny_data):
    data = DataDir.load(tiny_data)
    broken, short = data.wav[data.utts[3]], data.wav[data.utts[5]]
    with open(broken, "wb") as f:
        f.write(b"RIFF not really a wave file" * 10)
    sf.write(short, np.zeros(4000, np.float32), 16000, subtype="PCM_16")
    for _ in range(2):  # measured the first time, the unreadable one again the second
        store = FileStore(DataDir.load(tiny_data), progress=False)
        assert store.skipped.count == 2 and len(store) == 22
        reasons = dict(store.skipped.items)
        assert "not a readable audio file" in reasons[broken] and reasons[short] == "too short: 4000 samples"
        durs = DataDir.load(tiny_data).utt2dur
        assert data.utts[3] not in durs and durs[data.utts[5]] == 0.25


def test_utt2dur_format_gives_sample_counts_back():
    assert format_seconds(1.5) == "1.5" and format_seconds(2) == "2" and format_seconds(0) == "0"
    for n in list(range(0, 20000, 7)) + [10**7 + 1, 16000 * 3600 + 15999]:
        assert round(float(format_seconds(n / 16000)) * 16000) == n


def test_memory_and_file_stores_read_the_same_samples(tiny_data):
    files = FileStore(DataDir.load(tiny_data), progress=False)
    memory = MemoryStore(DataDir.load(tiny_data), progress=False)
    assert files.utts == memory.utts and files.lengths.tolist() == memory.lengths.tolist()
    for i in range(len(files)):
        n = files.num_samples(i)
        np.testing.assert_array_equal(files.read(i, 0, n), memory.read(i, 0, n))


# ---------------------------------------------------------------- sampler and feed


@pytest.mark.parametrize("segment", [False, True])
def test_sampler_spanning_epochs_yields_the_per_epoch_batches(segment):
    seg = (lambda step, epoch: 1000 + 10 * epoch + step) if segment else None
    args = dict(n=50, global_batch=8, world_size=2, accum=2, seed=3, steps=6, with_segment=seg)

    def per_epoch(rank, epoch, start=0):
        out = []
        for b in GlobalBatchSampler(rank=rank, epoch=epoch, start_step=start, **args):
            out.append([tuple(k) for k in b])
        return out

    for rank in range(2):
        want = [b for e in range(3) for b in per_epoch(rank, e)]
        whole = [[tuple(k) for k in b] for b in GlobalBatchSampler(rank=rank, end_step=18, **args)]
        assert whole == want and len(GlobalBatchSampler(rank=rank, end_step=18, **args)) == 36
        # from a resume point in the middle of epoch 1
        tail = [[tuple(k) for k in b] for b in GlobalBatchSampler(rank=rank, epoch=1, start_step=2,
                                                                  end_step=18, **args)]
        assert tail == want[(6 + 2) * 2:]
        assert all(k[1] == e for e in range(3) for b in per_epoch(rank, e) for k in b)
        if segment:
            assert all(k[2] == 1000 + 10 * e + s for e in range(3)
                       for s, b in enumerate(per_epoch(rank, e)[::2]) for k in b)
    # epoch-keyed items are what an int index with the dataset's epoch gives
    store = MemoryStore.__new__(MemoryStore)
    store.utts, store.lengths = ["a", "b"], np.array([4000, 9000])
    store.offsets, store.samples = np.array([0, 4000]), np.arange(13000).astype(np.int16)
    ds = MultiCropDataset(store, 2, 3000, 1, 1000, seed=1)
    ds.epoch = 4
    a, b = ds[1], ds[(1, 4)]
    assert all(np.array_equal(a[k], b[k]) for k in ("global", "local")) and a["bad"] == b["bad"] == []
    assert not np.array_equal(ds[(1, 5)]["global"], a["global"])


def test_stratified_global_crops_come_from_successive_parts_of_the_utterance():
    store = MemoryStore.__new__(MemoryStore)  # one utterance whose samples count 0, 1, 2, ...
    store.utts, store.lengths = ["a"], np.array([10000])
    store.offsets, store.samples = np.array([0]), np.arange(10000).astype(np.int16)
    starts = {}
    for placement in (False, True):
        ds = MultiCropDataset(store, 2, 4000, 0, 1000, seed=3, stratified=placement)
        crops = np.stack([ds[(0, e)]["global"] for e in range(200)])  # (epochs, 2, samples)
        crops = np.rint(crops * 32768).astype(int)  # back to the stored sample numbers
        assert np.all(np.diff(crops, axis=-1) == 1)  # contiguous crops inside the utterance
        starts[placement] = crops[:, :, 0]
    first, second = starts[True][:, 0], starts[True][:, 1]
    assert first.max() <= 3000 <= second.min()  # crop k starts in the k-th half of 0..6000
    assert first.min() < 300 and second.max() > 5700  # and anywhere in it
    overlap = lambda s: np.clip(4000 - np.abs(s[:, 0] - s[:, 1]), 0, None).mean()  # noqa: E731
    assert overlap(starts[True]) < 0.8 * overlap(starts[False])
    assert (starts[False][:, 0] > starts[False][:, 1]).any()  # random placement: either order


class Counting:
    """Counts the DataLoaders the trainer makes."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = loader_mod.make_loader

        def counted(*args, **kw):
            self.n += 1
            return real(*args, **kw)

        monkeypatch.setattr(loader_mod, "make_loader", counted)


def test_one_loader_for_the_whole_run_and_workers_change_nothing(tiny_data, tmp_path, monkeypatch):
    data = DataDir.load(tiny_data)
    ref = Trainer(tiny_cfg(), DinoMethod(), data, tmp_path / "w0")
    ref.fit()
    count = Counting(monkeypatch)
    two = Trainer(tiny_cfg(num_workers=2), DinoMethod(), data, tmp_path / "w2")
    two.fit()
    assert count.n == 1 and two.step == ref.step == 6  # 2 epochs x 3 steps, one set of workers
    assert_same(weights(two), weights(ref))


class NextUtterance:
    """A positive sampler: local crops from the next utterance (a stand-in for clusters)."""

    def __init__(self, n: int, n_global: int) -> None:
        self.n, self.n_global = n, n_global

    def __call__(self, anchor, slot, rng):
        return (anchor + 1) % self.n if slot >= self.n_global else anchor


class SwitchingDino(DinoMethod):
    def on_epoch_start(self, epoch):
        super().on_epoch_start(epoch)
        if epoch == 1:  # like C-DINO's re-clustering: the dataset changes at an epoch start
            self._dataset.positive = NextUtterance(len(self._dataset), self.dc.n_global)


def test_dataset_changed_at_an_epoch_start_restarts_the_workers(tiny_data, tmp_path, monkeypatch):
    data = DataDir.load(tiny_data)
    ref = Trainer(tiny_cfg(), SwitchingDino(), data, tmp_path / "w0")
    ref.fit()
    plain = Trainer(tiny_cfg(), DinoMethod(), data, tmp_path / "plain")
    plain.fit()
    count = Counting(monkeypatch)
    two = Trainer(tiny_cfg(num_workers=2), SwitchingDino(), data, tmp_path / "w2")
    two.fit()
    assert count.n == 2  # the read-ahead batches of epoch 1 used the old sampler: dropped
    assert_same(weights(two), weights(ref))
    assert any(not torch.equal(v, plain.student.state_dict()[k]) for k, v in weights(ref).items())


# -------------------------------------------------------------------- bad files


def test_file_failing_inside_a_worker_is_replaced_logged_and_reported(tiny_data, tmp_path):
    FileStore(DataDir.load(tiny_data), progress=False)  # lengths indexed (utt2dur) while readable
    data = DataDir.load(tiny_data)
    victim = data.utts[7]
    path = data.wav[victim]
    with open(path, "r+b") as f:  # the file is still there, its header is not
        f.seek(0)
        f.write(b"\x00" * 64)
    runs = {}
    for workers in (2, 0):
        t = Trainer(tiny_cfg(num_workers=workers), DinoMethod(), DataDir.load(tiny_data), tmp_path / f"w{workers}")
        assert t.store.skipped.count == 0  # nothing known to be wrong at start
        history = t.fit()
        runs[workers] = weights(t)
        assert [h["skipped_files"] for h in history] == [1]  # met in epoch 1, named once
        assert history[0]["skipped"][0].startswith(f"{path}: ")
        assert f"training data: {path}: " in (tmp_path / f"w{workers}" / "train.log").read_text()
        listed = (tmp_path / f"w{workers}" / "skipped.tsv").read_text().splitlines()
        assert [line.split("\t")[0] for line in listed] == [path]
    assert_same(runs[2], runs[0])  # the stand-in is a function of the seed only
    # the item of the bad utterance holds another utterance's audio, not zeros
    ds = MultiCropDataset(FileStore(DataDir.load(tiny_data), progress=False), 2, 9600, 1, 4800, seed=0)
    i = ds.store.utts.index(victim)
    item = ds[(i, 0)]
    assert item["index"] != i and [p for p, _ in item["bad"]] == [path]
    assert np.abs(item["global"]).max(axis=1).min() > 0
    assert item["index"] == ds[(i, 0)]["index"]


# ----------------------------------------------------------------------- shards


def test_dino_from_shards_equals_the_data_folder_and_resumes_exactly(tiny_data, tmp_path):
    write_shards(tiny_data, tmp_path / "shards", shard_mb=0.05, progress=False)  # several shards, shuffled
    cfg = tiny_cfg(checkpoint_every=2)
    folder = Trainer(cfg, DinoMethod(), DataDir.load(tiny_data), tmp_path / "folder")
    folder.fit()
    shards = Trainer(cfg, DinoMethod(), DataDir.load(tmp_path / "shards"), tmp_path / "shards_run")
    assert type(shards.store).__name__ == "ShardStore" and shards.store.utts == folder.store.utts
    shards.fit()
    assert_same(weights(shards), weights(folder))

    method = DinoMethod()
    killed = Trainer(cfg, method, DataDir.load(tmp_path / "shards"), tmp_path / "killed")
    stop_after_step(method, 2)
    with pytest.raises(StopAt):
        killed.fit()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "killed" / "checkpoints")] == [2]
    resumed = Trainer(cfg, DinoMethod(), DataDir.load(tmp_path / "shards"), tmp_path / "killed", resume=True)
    resumed.fit()
    assert resumed.step == folder.step
    assert_same(weights(resumed), weights(folder))


def test_cli_trains_from_a_shard_folder(tiny_data, tmp_path):
    from cdino.cli import main

    write_shards(tiny_data, tmp_path / "shards", shard_mb=1, progress=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("encoder: {name: ecapa_tdnn_small}\n"
                   "trainer: {epochs: 1, global_batch: 8, progress: false, tensorboard: false, threads: 1}\n"
                   "optim: {name: adamw, lr: 0.001, lr_scale_with_batch: false, warmup_epochs: 0.2}\n"
                   "dino: {out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, global_seconds: 0.6, "
                   "local_seconds: 0.3, n_local: 2}\n")
    out = tmp_path / "exp"
    assert main(["train", "--method", "dino", "--data", str(tmp_path / "shards"), "--out", str(out),
                 "--config", str(cfg)]) == 0
    assert (out / "model" / "encoder.safetensors").is_file()


# ------------------------------------------------------------------- loss gate


def test_fast_gate_em_equals_the_textbook_em():
    """fit_loss_gate's closed-form 2-component EM against responsibilities by log-sum-exp."""
    from cdino.pseudo.loss_gate import fit_loss_gate

    rng = np.random.default_rng(5)
    noisy = rng.random(20000) < 0.3
    losses = np.where(noisy, rng.lognormal(np.log(5.0), 0.4, noisy.size), rng.lognormal(0.0, 0.5, noisy.size))
    fit = fit_loss_gate(losses)
    x = np.log(losses)
    spread = x.std()
    mean, var, weight = np.quantile(x, [0.25, 0.75]), np.full(2, (0.5 * spread) ** 2), np.full(2, 0.5)
    prev, it = -np.inf, 0
    for it in range(1, 301):
        logp = (np.log(weight) - 0.5 * ((x[:, None] - mean) ** 2) / var - 0.5 * np.log(var)
                - 0.5 * np.log(2 * np.pi))
        lse = np.logaddexp(logp[:, 0], logp[:, 1])[:, None]
        resp = np.exp(logp - lse)
        ll = lse.mean()
        nk = resp.sum(0) + 1e-12
        weight = np.clip(nk / x.size, 1e-6, None)
        weight /= weight.sum()
        mean = (resp * x[:, None]).sum(0) / nk
        var = np.maximum((resp * (x[:, None] - mean) ** 2).sum(0) / nk, (1e-3 * spread) ** 2)
        if ll - prev < 1e-7:
            break
        prev = ll
    assert fit.converged and fit.n_iter == it
    np.testing.assert_allclose(fit.means, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit.stds, np.sqrt(var), rtol=1e-9)
    np.testing.assert_allclose(fit.weights, weight, rtol=1e-9)
    assert 1.5 < fit.threshold < 4.5
