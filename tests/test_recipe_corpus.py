"""A recipe's simulated corpus: the dev split's size (`corpus.dev_speakers`) and its checks."""

from __future__ import annotations

import pytest

from cdino.errors import ConfigError
from cdino.pipeline.method import MethodPipeline, load_recipe


def _speakers(path) -> int:
    return len(path.read_text().splitlines())


def test_corpus_dev_speakers_sets_the_dev_split(tmp_path):
    """0 makes no dev split; a number makes one of that many speakers; train and test alike."""
    made = {}
    for n in (0, 3):
        recipe = load_recipe("quick", ["corpus.preset=tiny", f"corpus.dev_speakers={n}"])
        pipe = MethodPipeline(recipe, tmp_path / f"dev{n}")
        pipe.stage_corpus()
        made[n] = tmp_path / f"dev{n}" / "corpus"
    assert not (made[0] / "dev").exists()
    assert _speakers(made[3] / "dev" / "spk2utt") == 3
    for name in ("train/wav.scp", "test/trials", "train/visual.npy"):
        assert (made[0] / name).read_bytes() == (made[3] / name).read_bytes(), name


def test_evaluating_a_missing_dev_split_is_an_error():
    """The demo makes no dev split; asking it to evaluate one names both keys."""
    assert load_recipe("demo").corpus.dev_speakers == 0
    with pytest.raises(ConfigError, match="evaluate_dev.*corpus.dev_speakers"):
        load_recipe("demo", ["evaluate_dev=true"])
    assert load_recipe("demo", ["evaluate_dev=true", "corpus.dev_speakers=40"]).evaluate_dev
