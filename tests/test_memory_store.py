"""A pipeline's stages decode their training folder into memory once per process."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from cdino.data.kaldi_dir import DataDir
from cdino.data.stores import DataConfig, MemoryStore, open_store

from conftest import write_speaker_dir


def test_unchanged_folder_reuses_the_store_and_a_changed_file_decodes_it_again(tmp_path):
    data_dir = write_speaker_dir(tmp_path / "train", n_speakers=2, utts_per_speaker=2, seconds=0.6)
    cfg = DataConfig(store="memory")
    first = open_store(DataDir.load(data_dir), cfg, progress=False)
    assert isinstance(first, MemoryStore)
    assert open_store(DataDir.load(data_dir), cfg, progress=False) is first  # reloaded folder, same files
    with pytest.raises(ValueError):  # the shared waveforms cannot be written by a stage
        first.samples[0] = 1
    # Another minimum length is another store.
    other = open_store(DataDir.load(data_dir), DataConfig(store="memory", min_seconds=0.1), progress=False)
    assert other is not first
    # A rewritten file (new contents, new modification time) is decoded again.
    data = DataDir.load(data_dir)
    path = data.wav[data.utts[0]]
    wave, sr = sf.read(path, dtype="float32")
    sf.write(path, 0.5 * wave, sr, subtype="PCM_16")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = open_store(DataDir.load(data_dir), DataConfig(store="memory", min_seconds=0.1), progress=False)
    assert again is not other
    np.testing.assert_allclose(again.read(0, 0, 100), 0.5 * other.read(0, 0, 100), atol=1 / 32768)
