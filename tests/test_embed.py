"""Full-utterance embedding extraction: exact batching, resumable shards, ranks, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from cdino.data.audio import SkippedFiles
from cdino.data.kaldi_dir import write_data_dir
from cdino.errors import AudioError, DataError
from cdino.eval.embed import (embed_waves, extract_embeddings, load_embeddings, mean_embedding,
                              merge_embeddings, plan_batches)
from cdino.eval.threshold import pseudo_label_threshold, pseudo_label_trials
from cdino.frontend.fbank import Fbank
from cdino.metrics import eer_threshold

# Sample counts at 16 kHz: three of 1.0 s and two of 1.0 s + 50 samples (the same number
# of frames, so they batch exactly), the others distinct.
LENGTHS = [16000, 16000, 16050, 24000, 16000, 8000, 20000, 16050, 12000]


class CountingEncoder(nn.Module):
    """A tiny speaker encoder (conv + mean/std pooling) that counts what it embeds."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(80, 16, 5, padding=2)
        self.out = nn.Linear(32, dim)
        self.embed_dim = dim
        self.calls = 0
        self.utterances = 0

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.utterances += feats.shape[0]
        h = torch.relu(self.conv(feats.transpose(1, 2)))
        return self.out(torch.cat([h.mean(-1), h.std(-1)], dim=1))


def make_data(root, lengths=LENGTHS, rate=16000, seed=0):
    rng = np.random.default_rng(seed)
    wav = {}
    for i, n in enumerate(lengths):
        path = root / "audio" / f"u{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(n) / rate
        x = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(n)
        sf.write(path, x.astype(np.float32), rate)
        wav[f"u{i}"] = path
    return write_data_dir(root / "data", wav)


@pytest.fixture()
def data(tmp_path):
    return make_data(tmp_path)


def test_batched_equals_one_by_one(data):
    fbank = Fbank()
    enc = CountingEncoder().eval()
    utts, batched = extract_embeddings(enc, fbank, data, progress=False)
    batched_calls = enc.calls
    enc.calls = 0
    utts1, single = extract_embeddings(enc, fbank, data, batch_frames=1, progress=False)
    assert utts == utts1 == [f"u{i}" for i in range(len(LENGTHS))]
    assert enc.calls == len(LENGTHS)
    # 16000 (x3) and 16050 (x2) samples both give 98 frames: one batch of 5, 4 single ones.
    assert batched_calls == 5
    assert batched.dtype == np.float32 and batched.shape == (len(LENGTHS), 8)
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)


def test_plan_batches_tolerance_and_budget():
    fbank = Fbank()
    lengths = [16000, 16000, 16400, 32000, 16000]
    exact = plan_batches(lengths, fbank, batch_frames=10_000)
    assert sorted(map(sorted, exact)) == [[0, 1, 4], [2], [3]]
    loose = plan_batches(lengths, fbank, batch_frames=10_000, bucket_tolerance=0.05)
    assert sorted(map(sorted, loose)) == [[0, 1, 2, 4], [3]]
    tight = plan_batches(lengths, fbank, batch_frames=2 * 98)  # 98 frames per second of audio
    assert max(len(b) for b in tight) == 2


def test_tolerance_trims_to_shortest(data):
    fbank = Fbank()
    enc = CountingEncoder().eval()
    _, exact = extract_embeddings(enc, fbank, data, progress=False)
    enc.calls = 0
    _, loose = extract_embeddings(enc, fbank, data, progress=False, bucket_tolerance=0.5)
    assert enc.calls < 4
    assert not np.allclose(exact, loose)  # trimmed utterances differ a little
    cos = (exact * loose).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(loose, axis=1)
    assert cos.min() > 0.9


def test_resume_after_crash_recomputes_only_missing_shards(data, tmp_path):
    fbank = Fbank()
    out = tmp_path / "emb"
    _, reference = extract_embeddings(CountingEncoder().eval(), fbank, data, progress=False)

    def crash_after_two(index):
        if index == 1:
            raise KeyboardInterrupt

    enc = CountingEncoder().eval()
    with pytest.raises(KeyboardInterrupt):
        extract_embeddings(enc, fbank, data, out_dir=out, shard_size=2, progress=False,
                           on_shard=crash_after_two)
    assert (out / "shards" / "00001.npy").exists() and not (out / "shards" / "00002.npy").exists()
    assert not (out / "embeddings.npy").exists()

    enc = CountingEncoder().eval()
    utts, emb = extract_embeddings(enc, fbank, data, out_dir=out, shard_size=2, progress=False)
    assert enc.utterances == len(LENGTHS) - 4  # shards 0 and 1 were loaded, not recomputed
    np.testing.assert_allclose(emb, reference, rtol=1e-5, atol=1e-6)
    assert load_embeddings(out)[0] == utts

    enc = CountingEncoder().eval()
    again = extract_embeddings(enc, fbank, data, out_dir=out, shard_size=2, progress=False)
    assert enc.utterances == 0 and np.array_equal(again[1], emb)

    with pytest.raises(DataError, match="another utterance list"):
        extract_embeddings(enc, fbank, data, out_dir=out, shard_size=3, progress=False)


def test_ranks_take_shards_round_robin_then_merge(data, tmp_path):
    fbank = Fbank()
    out = tmp_path / "emb"
    _, reference = extract_embeddings(CountingEncoder().eval(), fbank, data, progress=False)
    enc0 = CountingEncoder().eval()
    u0, e0 = extract_embeddings(enc0, fbank, data, out_dir=out, shard_size=2, rank=0,
                                world_size=2, progress=False)
    assert u0 == ["u0", "u1", "u4", "u5", "u8"]  # shards 0, 2, 4
    with pytest.raises(DataError, match="not finished"):
        merge_embeddings(out)
    enc1 = CountingEncoder().eval()
    extract_embeddings(enc1, fbank, data, out_dir=out, shard_size=2, rank=1, world_size=2,
                       progress=False)
    assert enc0.utterances + enc1.utterances == len(LENGTHS)
    utts, emb = merge_embeddings(out)
    assert utts == [f"u{i}" for i in range(len(LENGTHS))]
    np.testing.assert_allclose(emb, reference, rtol=1e-5, atol=1e-6)


def test_bad_audio_raises_or_is_skipped_and_counted(data, tmp_path):
    bad = tmp_path / "audio" / "u3.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    enc = CountingEncoder().eval()
    with pytest.raises(AudioError, match="u3.wav"):
        extract_embeddings(enc, Fbank(), data, progress=False)
    skipped = SkippedFiles()
    utts, emb = extract_embeddings(enc, Fbank(), data, progress=False, skip_bad=True,
                                   skipped=skipped)
    assert "u3" not in utts and len(utts) == emb.shape[0] == len(LENGTHS) - 1
    assert skipped.count == 1 and skipped.items[0][0].endswith("u3.wav")
    as_list: list = []
    extract_embeddings(enc, Fbank(), data, out_dir=tmp_path / "e", progress=False,
                       skip_bad=True, skipped=as_list)
    assert [u for u, _ in as_list] == ["u3"]


def test_subset_order_eval_mode_and_unknown_utterance(data):
    enc = CountingEncoder().eval()
    utts, emb = extract_embeddings(enc, Fbank(), data, utts=["u5", "u0"], progress=False)
    assert utts == ["u5", "u0"] and enc.utterances == 2
    _, full = extract_embeddings(enc, Fbank(), data, progress=False)
    np.testing.assert_allclose(emb, full[[5, 0]], rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="'nobody'"):
        extract_embeddings(enc, Fbank(), data, utts=["nobody"], progress=False)
    with pytest.raises(ValueError, match="eval mode"):
        extract_embeddings(CountingEncoder().train(), Fbank(), data, progress=False)


def test_embed_waves_and_mean():
    enc = CountingEncoder().eval()
    rng = np.random.default_rng(1)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (8000, 8000, 9000)]
    emb = embed_waves(enc, Fbank(), waves)
    assert enc.calls == 2 and emb.shape == (3, 8)
    alone = embed_waves(enc, Fbank(), waves[1:2])
    torch.testing.assert_close(emb[1:2], alone, rtol=1e-5, atol=1e-6)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    m = mean_embedding(x)
    assert m.dtype == np.float32 and np.allclose(m, x.mean(0), atol=1e-6)


def test_pseudo_label_threshold_separates_clusters():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 16))
    labels = np.repeat(np.arange(6), 20)
    emb = centres[labels] + 0.8 * rng.standard_normal((120, 16))
    mean = emb.mean(0)
    enroll, test, target = pseudo_label_trials(labels, 2000, seed=1)
    assert (labels[enroll] == labels[test]).tolist() == target.astype(bool).tolist()
    assert target.sum() == 1000 and not (enroll[target == 1] == test[target == 1]).any()
    t = pseudo_label_threshold(emb, labels, mean, n_trials=2000, seed=1)
    x = (emb - mean) / np.linalg.norm(emb - mean, axis=1, keepdims=True)
    scores = (x[enroll] * x[test]).sum(1)
    assert t == pytest.approx(eer_threshold(scores, target))
    assert np.median(scores[target == 0]) < t < np.median(scores[target == 1])
    with pytest.raises(ValueError, match="two pseudo-label clusters"):
        pseudo_label_threshold(emb, np.zeros(120, int), mean)
