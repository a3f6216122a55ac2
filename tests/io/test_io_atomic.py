"""Atomic writes: complete files under the final name, nothing left behind on failure."""

import errno
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ldmtool.errors import LdmError
from ldmtool.io import Volume, atomic_path, atomic_write_bytes, atomic_write_text, write_dicom_series, write_nifti
from ldmtool.io.atomic import atomic_dir, atomic_write, check_writable_dir, temp_name_for


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


# --- OS errors become one-line user errors; nothing is left behind -------------------------------


def _volume():
    return Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4), {})


def _only_final_files(folder):
    hidden = [p.name for p in Path(folder).rglob(".*")]
    assert not hidden, f"temporary files left behind: {hidden}"


def test_file_where_a_folder_is_needed(tmp_path):
    (tmp_path / "out").write_text("a file")
    for call in (
        lambda: atomic_write_text(tmp_path / "out" / "a.txt", "x"),
        lambda: write_nifti(_volume(), tmp_path / "out" / "sub" / "a.nii.gz"),
        lambda: write_dicom_series(_volume(), tmp_path / "out" / "series"),
        lambda: check_writable_dir(tmp_path / "out" / "deeper"),
    ):
        with pytest.raises(LdmError, match=r"out is a file, not a folder; choose another output path") as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(LdmError, match="it is a file, not a folder"):
        check_writable_dir(tmp_path / "out")
    with pytest.raises(LdmError, match="it is a file, not a folder"), atomic_dir(tmp_path / "out"):
        pass
    _only_final_files(tmp_path)


def test_folder_where_a_file_is_needed(tmp_path):
    (tmp_path / "a.nii.gz").mkdir()
    with pytest.raises(LdmError, match=r"a.nii.gz: it is a folder; choose a file name"):
        write_nifti(_volume(), tmp_path / "a.nii.gz")
    _only_final_files(tmp_path)


@pytest.mark.parametrize(
    "err, words",
    [
        (
            PermissionError(errno.EACCES, "Permission denied"),
            "permission denied; choose an output folder you can write to",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device; free space there"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
    ],
)
def test_write_failures_are_user_errors_and_leave_nothing(tmp_path, monkeypatch, err, words):
    target = tmp_path / "out" / "a.nii.gz"

    def failing_save(img, filename):
        Path(filename).write_bytes(b"partial")  # a partial temporary, as a real full disk leaves
        raise err

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(LdmError, match=f"cannot write {target}: {words}"):
        write_nifti(_volume(), target)
    assert list((tmp_path / "out").iterdir()) == []

    def failing_text(self, *a, **k):
        raise err

    monkeypatch.setattr(Path, "write_text", failing_text)
    with pytest.raises(LdmError, match=words):
        atomic_write_text(tmp_path / "out" / "b.json", "{}")
    assert list((tmp_path / "out").iterdir()) == []


def test_disk_full_while_writing_a_dicom_series(tmp_path, monkeypatch):
    calls = []

    def save_as(self, filename, **kw):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        Path(filename).write_bytes(b"x")

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", save_as)
    with pytest.raises(LdmError, match=r"cannot write .*series: no space left on the device"):
        write_dicom_series(_volume(), tmp_path / "series")
    assert list(tmp_path.iterdir()) == []


def test_name_too_long(tmp_path):
    with pytest.raises(LdmError, match="more than the 255 a file system allows; use a shorter output name"):
        atomic_write_text(tmp_path / ("x" * 300 + ".json"), "{}")
    name = "y" * 245 + ".json"  # an allowed name; its temporary name must fit too
    atomic_write_text(tmp_path / name, "{}")
    assert (tmp_path / name).read_text() == "{}"
    _only_final_files(tmp_path)


def test_other_os_errors_are_not_hidden(tmp_path, monkeypatch):
    def failing(self, *a, **k):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(OSError, match="Bad file descriptor"):
        atomic_write_text(tmp_path / "a.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_check_writable_dir_leaves_nothing(tmp_path):
    assert check_writable_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert list(tmp_path.iterdir()) == []  # the folders it made to test are gone again
    (tmp_path / "existing").mkdir()
    check_writable_dir(tmp_path / "existing")
    assert list((tmp_path / "existing").iterdir()) == []
    with pytest.raises(LdmError, match="MiB free on its disk"):
        check_writable_dir(tmp_path / "existing", need_bytes=2**62)


@pytest.mark.parametrize(
    "err, words",
    [
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left"),
    ],
)
def test_check_writable_dir_refuses(tmp_path, monkeypatch, err, words):
    real_open = os.open

    def guarded_open(path, *a, **k):
        if str(path).startswith(str(tmp_path)):
            raise err
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", guarded_open)
    with pytest.raises(LdmError, match=f"cannot write {tmp_path / 'ro' / 'out'}: {words}"):
        check_writable_dir(tmp_path / "ro" / "out")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
