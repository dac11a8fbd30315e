"""cdino.atomic: files and folders appear whole or not at all."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cdino.atomic import (atomic_open, copy_folder, file_mode, leftovers, replacing, replacing_folder, save_npy,
                          temp_path, write_bytes, write_lines, write_text)


def test_write_text_and_lines_replace_whole_files(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    write_text(path, "old\n")
    write_lines(path, ["x", "y"])
    assert path.read_text() == "x\ny\n"
    assert leftovers(path.parent) == []


def test_an_error_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "old\n")

    def lines():
        yield "half"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_lines(path, lines())
    assert path.read_text() == "old\n"
    assert leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_temporary_name_is_hidden_beside_the_target_and_unique_per_process(tmp_path):
    tmp = temp_path(tmp_path / "utt2dur")
    assert tmp.parent == tmp_path and tmp.name == f".utt2dur.tmp-{os.getpid()}"
    with replacing(tmp_path / "utt2dur") as t:
        assert t == tmp
        t.write_text("u 1.0\n")
        assert not (tmp_path / "utt2dur").exists()  # nothing at the target until the end
    assert (tmp_path / "utt2dur").read_text() == "u 1.0\n"


def test_leftovers_finds_what_a_killed_writer_left(tmp_path):
    (tmp_path / ".step-00000003.pt.tmp-999999").write_bytes(b"partial")
    (tmp_path / ".model.old-12").mkdir()
    (tmp_path / "model").mkdir()
    assert [p.name for p in leftovers(tmp_path)] == [".model.old-12", ".step-00000003.pt.tmp-999999"]


def test_binary_and_npy_writes(tmp_path):
    write_bytes(tmp_path / "b.bin", b"\x00\x01", durable=True)
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    save_npy(tmp_path / "e", np.arange(6, dtype=np.float32).reshape(2, 3))  # no .npy appended
    with open(tmp_path / "e", "rb") as f:
        assert np.load(f).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError):
        save_npy(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))  # no pickles
    assert not (tmp_path / "o.npy").exists() and leftovers(tmp_path) == []


def test_atomic_open_refuses_append(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "a", "a"):
            pass


def test_replacing_folder_swaps_a_whole_folder(tmp_path):
    dst = tmp_path / "model"
    with replacing_folder(dst) as tmp:
        (tmp / "w").write_text("1")
    with replacing_folder(dst) as tmp:
        assert not any(tmp.iterdir())  # a fresh folder each time
        (tmp / "w2").write_text("2")
        assert (dst / "w").read_text() == "1"  # the old folder stays whole until the end
    assert sorted(os.listdir(dst)) == ["w2"]
    with pytest.raises(RuntimeError):
        with replacing_folder(dst) as tmp:
            (tmp / "w3").write_text("3")
            raise RuntimeError("export failed")
    assert sorted(os.listdir(dst)) == ["w2"] and leftovers(tmp_path) == []


def test_copy_folder_replaces_the_destination(tmp_path):
    src = tmp_path / "round2" / "model"
    src.mkdir(parents=True)
    (src / "a").write_text("new")
    (src / "sub").mkdir()
    (src / "sub" / "b").write_text("b")
    dst = tmp_path / "model"
    dst.mkdir()
    (dst / "stale").write_text("old")
    assert copy_folder(src, dst) == dst
    assert sorted(os.listdir(dst)) == ["a", "sub"] and (dst / "sub" / "b").read_text() == "b"
    assert leftovers(tmp_path) == []


def test_file_mode_follows_the_umask():
    old = os.umask(0o027)
    try:
        assert file_mode() == 0o640
    finally:
        os.umask(old)
    assert file_mode() == 0o666 & ~old
