"""The method pipeline's ``choose`` stage: settings of the rounds picked without labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cdino.errors import ConfigError
from cdino.eval.selection import pick_candidate
from cdino.pipeline.method import MethodPipeline, load_recipe

from conftest import write_speaker_dir, write_trials_for

SMALL = ["base.trainer.global_batch=8", "base.trainer.micro_batch=8", "base.trainer.progress=false",
         "pseudo.trainer.epochs=1", "pseudo.pseudo.kmeans.n_clusters=4", "bootstrap=0"]


def _pipeline(tmp_path, choose: str, extra=()):
    import torch

    from cdino.eval.model_folder import save_model_folder
    from cdino.models.registry import build_encoder

    train = write_speaker_dir(tmp_path / "train", 4, 6, 1.0, visual_dim=8)
    test = write_speaker_dir(tmp_path / "test", 4, 3, 1.0, seed=1)
    trials = write_trials_for(test, tmp_path / "trials", n=40)
    recipe = load_recipe("quick", [f"data.train={train}", f"data.test={test}", f"data.trials={trials}",
                                   f"choose={choose}", *SMALL, *extra])
    pipe = MethodPipeline(recipe, tmp_path / "exp")
    cfg = pipe.train_config("pseudo")
    torch.manual_seed(0)
    enc = build_encoder(cfg.encoder)  # stands in for stage 1's model
    save_model_folder(tmp_path / "exp" / "cdino" / "model", enc, cfg.encoder, cfg.fbank,
                      np.zeros(enc.embed_dim, np.float32), 0.5, "test")
    return pipe


def test_choose_picks_by_the_criterion_and_hands_round_one_to_the_rounds(tmp_path, capsys):
    pipe = _pipeline(tmp_path, "{pseudo.kmeans.n_clusters: [3, 4], optim.lr: [0.002, 0.0005]}")
    info = pipe.stage_choose()
    pipe.mark("choose", info)
    first, second = info["keys"]
    assert [first["key"], second["key"]] == ["pseudo.kmeans.n_clusters", "optim.lr"]
    for d in (first, second):  # each pick is the criterion's lowest, a choice between different values
        assert d["criterion"] == "cross_view" and len(d["values"]) == 2
        assert json.loads(pick_candidate(d["values"])[1]) == d["pick"]
        a, b = (v["cross_view"] for v in d["values"].values())
        assert a != b
        assert all("eer" in c for c in d["candidates"].values())  # shown beside the criterion, for the reader
    assert info["picks"] == {"pseudo.kmeans.n_clusters": first["pick"], "optim.lr": second["pick"]}
    # lr 0.002 is the recipe's own: that candidate is the first key's pick, trained once
    trained = sorted(p.parent.parent.name for p in (pipe.out / "choose").glob("*/round1/model/config.yaml"))
    assert len(trained) == 3, trained
    # the rounds take the picks, and their round 1 is the pick's (not trained again)
    cfg = pipe.train_config("pseudo")
    assert cfg.pseudo.kmeans.n_clusters == first["pick"] and cfg.optim.lr == second["pick"]
    pick_dir = pipe.out / "choose" / second["candidates"][json.dumps(second["pick"])]["folder"] / "round1"
    round1 = pipe.out / "pseudo" / "round1"
    assert (round1 / "model" / "encoder.safetensors").read_bytes() == \
        (pick_dir / "model" / "encoder.safetensors").read_bytes()
    before = (round1 / "summary.json").read_text()
    got = pipe.stage_pseudo()
    assert set(got["rounds"]) == {"pseudo_r1", "pseudo_r2"} and (round1 / "summary.json").read_text() == before
    pipe.mark("pseudo", got)
    from cdino.pipeline.report import write_report

    results = write_report(pipe, "pseudo_r2")  # the report shows every candidate's criterion and the picks
    assert [d["pick"] for d in results["choose"]] == [first["pick"], second["pick"]]
    assert "## Settings chosen without labels" in (pipe.out / "report.md").read_text()
    assert "picked without labels by cross_view" in capsys.readouterr().out


@pytest.mark.parametrize("choose, message", [
    ("{pseudo.rounds: [1, 2]}", "recipe key 'choose.pseudo.rounds': not chosen by candidates' round 1"),
    ("{pseudo.kmeans.n_clusters: []}", "recipe key 'choose.pseudo.kmeans.n_clusters': a list of candidate values"),
    ("{pseudo.kmeans.n_clustrs: [3, 4]}", "choose.pseudo.kmeans.n_clustrs"),
])
def test_choose_rejects_a_bad_key_before_anything_trains(tmp_path, choose, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _pipeline(tmp_path, choose)
    assert not (tmp_path / "exp" / "choose").exists()
