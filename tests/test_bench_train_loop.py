"""bench/bench_train_loop.py: the real loop beside the bare DINO step (tiny sizes: only
that it runs and reports; the figures come from runs alone on a machine)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import load_bench

TINY = ["encoder.name=ecapa_tdnn_small", "dino.out_dim=64", "dino.hidden_dim=32", "dino.bottleneck_dim=16",
        "dino.global_seconds=0.6", "dino.local_seconds=0.3", "trainer.threads=1", "trainer.tensorboard=false",
        "trainer.checkpoint_every=3", "trainer.log_every=3"]



def test_loop_and_step_are_timed_side_by_side(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        argv = ["--device", "cpu", "--batch", "8", "--steps", "3", "--warmup", "1", "--rounds", "2",
                "--utts", "16", "--seconds", "1.0", "--out", str(tmp_path / "exp")]
        assert load_bench("bench_train_loop").main(argv + [x for s in TINY for x in ("--set", s)]) == 0
    finally:
        torch.set_num_threads(threads)
    got = json.loads(capsys.readouterr().out)
    assert got["loop_utt_s"] > 0 and got["step_utt_s"] > 0
    assert got["ratio"] == pytest.approx(got["loop_utt_s"] / got["step_utt_s"], rel=1e-3)
    assert len(got["loop_block_utt_s"]) == len(got["step_block_utt_s"]) == 2
    # checkpoints every 3 steps: written inside the timed blocks, taken out, added back per step
    assert got["checkpoint_every_steps"] == 3 and got["checkpoint_s"] > 0
    assert got["loop_utt_s"] < got["loop_utt_s_without_checkpoints"]
    assert got["batch"] == 8 and got["data_workers"] == 0 and got["machine"]["cpu"]
    log = (tmp_path / "exp" / "train.log").read_text()
    assert "step 3 epoch 1" in log  # the log windows ran inside the timed loop


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    assert load_bench("bench_train_loop").main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no usable CUDA device" in err and "--device cpu" in err
