"""Label-free selection criteria: a model that clumps recordings by channel must not win."""

from __future__ import annotations

import numpy as np
import pytest

from cdino.eval.selection import (RecordingEmbeddings, cross_view_error, cross_view_trials, criteria, own_clusters_eer,
                                  pick_candidate, shared_partition, split_eer)


def _world(seed=0, speakers=30, sessions=4, utts=5, dim=24):
    """Recordings of speakers in sessions: identity, session (channel) and noise vectors."""
    rng = np.random.default_rng(seed)
    spk = np.repeat(np.arange(speakers), sessions * utts)
    sess = np.repeat(np.arange(speakers * sessions), utts)
    ident = rng.normal(size=(speakers, dim))[spk]
    chan = rng.normal(size=(speakers * sessions, dim))[sess]
    face = ident + 0.6 * rng.normal(size=(speakers * sessions, dim))[sess] + 0.3 * rng.normal(size=ident.shape)
    return rng, spk, sess, ident, chan, face


def _model(rng, ident, chan, speaker_weight, channel_weight):
    whole = speaker_weight * ident + channel_weight * chan + 0.4 * rng.normal(size=ident.shape)
    half = lambda: whole + 0.3 * rng.normal(size=ident.shape)  # noqa: E731
    return RecordingEmbeddings([str(i) for i in range(len(whole))], whole, half(), half(), np.zeros(whole.shape[1]))


def test_cross_view_ranks_a_speaker_model_above_a_model_that_clumps_sessions():
    rng, spk, sess, ident, chan, face = _world()
    speaker_model = _model(rng, ident, chan, 1.0, 0.8)
    channel_model = _model(rng, ident, chan, 0.5, 1.5)  # recordings of a session clump together
    has = np.ones(len(spk), bool)
    has[::7] = False  # some recordings lack the second view
    trials = cross_view_trials(face, has, chan + 0.2 * rng.normal(size=chan.shape))
    targets = trials.is_target.astype(bool)
    # the chosen targets are mostly one person in two sessions
    assert (spk[trials.enroll[targets]] == spk[trials.test[targets]]).mean() > 0.8
    assert (sess[trials.enroll[targets]] != sess[trials.test[targets]]).mean() > 0.8
    good = cross_view_error(speaker_model.whole, speaker_model.mean, trials)
    bad = cross_view_error(channel_model.whole, channel_model.mean, trials)
    assert good < bad - 0.05
    assert 0.0 <= own_clusters_eer(channel_model.whole, None) < 0.5
    values = criteria({"speaker": speaker_model, "channel": channel_model}, face, has, chan)
    assert values["speaker"]["cross_view"] < values["channel"]["cross_view"]
    assert set(values["speaker"]) == {"own_clusters", "split", "shared", "cross_channel", "cross_view"}


def test_split_and_shared_partition():
    rng, spk, sess, ident, chan, face = _world(seed=1)
    sharp = _model(rng, ident, chan, 1.0, 0.2)
    blurred = RecordingEmbeddings(sharp.utts, sharp.whole, sharp.first + 3 * rng.normal(size=sharp.first.shape),
                                  sharp.second + 3 * rng.normal(size=sharp.first.shape), sharp.mean)
    assert split_eer(sharp.first, sharp.second, None) < split_eer(blurred.first, blurred.second, None)
    labels = shared_partition([sharp.whole, blurred.whole])
    assert labels.shape == (len(spk),) and len(np.unique(labels)) > 10
    with pytest.raises(ValueError, match="second view"):
        cross_view_trials(face[:4], np.ones(4, bool), chan[:4])


def test_pick_candidate_takes_the_lowest_of_cross_view_where_scored_else_cross_channel():
    both = {"a": {"cross_view": 0.2, "cross_channel": 0.1}, "b": {"cross_view": 0.1, "cross_channel": 0.3}}
    assert pick_candidate(both) == ("cross_view", "b")
    assert pick_candidate(both, "cross_channel") == ("cross_channel", "a")
    audio = {n: {"cross_channel": r["cross_channel"]} for n, r in both.items()}
    assert pick_candidate(audio) == ("cross_channel", "a")
