"""Atomic writes: complete files under the final name, nothing left behind on failure."""

import os

import pytest

from ldmtool.io import atomic_path, atomic_write_bytes, atomic_write_text
from ldmtool.io.atomic import atomic_dir, atomic_write, temp_name_for


def test_temp_name_keeps_suffix_and_folder(tmp_path):
    tmp = temp_name_for(tmp_path / "case_0000.nii.gz")
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(".case_0000.tmp-")
    assert tmp.name.endswith(".nii.gz")
    assert str(os.getpid()) in tmp.name
    assert temp_name_for(tmp_path / "weights.safetensors").name.endswith(".safetensors")
    assert temp_name_for(tmp_path / "a.nii.gz") != temp_name_for(tmp_path / "a.nii.gz")


def test_write_text_and_bytes(tmp_path):
    atomic_write_text(tmp_path / "sub" / "a.txt", "hello")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "sub" / "a.txt").read_text() == "hello"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "sub" / "a.txt", "replaced")
    assert (tmp_path / "sub" / "a.txt").read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.bin", "sub"]


def test_failing_writer_leaves_nothing(tmp_path):
    target = tmp_path / "out.nii.gz"

    def writer(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, writer)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "keep.txt"
    atomic_write_text(target, "old")
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise ValueError("stop")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_atomic_dir(tmp_path):
    final = tmp_path / "series"
    with atomic_dir(final) as tmp:
        (tmp / "x.dcm").write_bytes(b"1")
    assert (final / "x.dcm").read_bytes() == b"1"
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "other") as tmp:
        (tmp / "x.dcm").write_bytes(b"1")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]
