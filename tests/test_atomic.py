"""utils/atomic.py: a target holds its old content or the whole new one; no temp file is left."""
from __future__ import annotations

import errno
import os

import cv2
import numpy as np
import pytest

from utils import atomic
from utils.atomic import (
    WriteError,
    atomic_dir,
    atomic_path,
    atomic_write,
    clean_stale_temps,
    copy_file,
    write_bytes,
    write_text,
)
from utils.cli import one_line

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def leftovers(folder):
    """Everything in ``folder`` except the names given as targets by the tests."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_text_and_bytes_replace_whole_file(tmp_path):
    p = tmp_path / "a.txt"
    write_text(p, "old\n")
    write_text(p, "new ü\n")
    assert p.read_text(encoding="utf-8") == "new ü\n"
    write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")  # parent folders are created
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert leftovers(tmp_path) == []


def test_copy_file_replaces_whole_or_keeps_old(tmp_path):
    src, dst = write_bytes(tmp_path / "src.pt", b"new" * 1000), write_bytes(tmp_path / "dst.pt", b"old")
    assert copy_file(src, dst) == dst and dst.read_bytes() == b"new" * 1000
    write_bytes(dst, b"old")
    with pytest.raises(FileNotFoundError):
        copy_file(tmp_path / "missing.pt", dst)
    assert dst.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_usual_permissions(tmp_path):
    p = write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask)  # not mkstemp's 0600


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_enospc_keeps_old_file_and_names_path(tmp_path, monkeypatch, where):
    p = tmp_path / "results.csv"
    p.write_text("old content\n")
    if where == "fsync":
        monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(ENOSPC))
    if where == "replace":
        real = os.replace

        def replace(src, dst):
            if str(dst) == str(p):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
            return real(src, dst)
        monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(WriteError) as ei:
        with atomic_write(p, "w") as f:
            f.write("new content that will not fit\n")
            if where == "write":
                raise ENOSPC
    assert p.read_text() == "old content\n"
    assert leftovers(tmp_path) == []
    msg = one_line(ei.value)
    assert str(p) in msg and "No space left on device" in msg
    assert ei.value.errno == errno.ENOSPC


def test_other_exception_removes_temp_and_passes_through(tmp_path):
    p = tmp_path / "x.txt"
    with pytest.raises(ZeroDivisionError):
        with atomic_write(p, "w") as f:
            f.write("partial")
            raise ZeroDivisionError("simulated")
    assert not p.exists() and leftovers(tmp_path) == []


def test_oserror_about_another_file_is_not_a_write_error(tmp_path):
    """A missing input read inside the block keeps its own name, not the target's."""
    p = tmp_path / "out.txt"
    with pytest.raises(FileNotFoundError) as ei:
        with atomic_write(p, "w") as f:
            f.write((tmp_path / "missing-input.txt").read_text())
    assert not isinstance(ei.value, WriteError)
    assert "missing-input.txt" in one_line(ei.value)
    assert leftovers(tmp_path) == []


def test_atomic_write_needs_write_mode(tmp_path):
    with pytest.raises(ValueError, match="write mode"):
        with atomic_write(tmp_path / "x", "r"):
            pass


def test_atomic_path_keeps_suffix_for_format_by_extension_writers(tmp_path):
    img = np.full((12, 16, 3), 200, np.uint8)
    with atomic_path(tmp_path / "im.jpg") as tmp:
        assert tmp.suffix == ".jpg" and tmp.parent == tmp_path
        assert cv2.imwrite(str(tmp), img)
    with atomic_path(tmp_path / "arr.npy") as tmp:
        np.save(tmp, img)  # np.save appends .npy unless the name already ends with it
    assert cv2.imread(str(tmp_path / "im.jpg")).shape == (12, 16, 3)
    assert np.array_equal(np.load(tmp_path / "arr.npy"), img)
    assert leftovers(tmp_path) == []


def test_atomic_path_writer_that_produces_nothing(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"old")
    with pytest.raises(WriteError, match="produced no file"):
        with atomic_path(p) as tmp:
            tmp.unlink()
    assert p.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_unwritable_folder_is_a_write_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriteError) as ei:
        write_text(blocker / "sub" / "a.txt", "y")  # parent is a file
    assert str(blocker / "sub" / "a.txt") in one_line(ei.value)


def test_atomic_dir_replaces_folder_whole(tmp_path):
    out = tmp_path / "model_openvino"
    out.mkdir()
    (out / "old.xml").write_text("old")
    with atomic_dir(out) as tmp:
        assert tmp != out and tmp.parent == tmp_path
        (tmp / "model.xml").write_text("new")
        (tmp / "model.bin").write_bytes(b"\x01")
        assert (out / "old.xml").exists()  # untouched until the block succeeds
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]
    assert leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == (0o777 & ~umask)


def test_atomic_dir_failure_keeps_old_folder(tmp_path):
    out = tmp_path / "ncnn"
    out.mkdir()
    (out / "model.param").write_text("old")
    with pytest.raises(WriteError) as ei:
        with atomic_dir(out) as tmp:
            (tmp / "model.param").write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "model.bin"))
    assert (out / "model.param").read_text() == "old"
    assert leftovers(tmp_path) == []
    assert str(out) in one_line(ei.value) and "No space left" in one_line(ei.value)


def test_atomic_dir_failed_swap_restores_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "a").write_text("old")
    real = os.replace

    def replace(src, dst):
        if str(dst) == str(out) and ".old-" not in str(src):  # moving the new folder in fails
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src), None, str(dst))
        return real(src, dst)
    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(WriteError):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("new")
    assert (out / "a").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_atomic_dir_new_folder(tmp_path):
    with atomic_dir(tmp_path / "deep" / "new") as tmp:
        (tmp / "f").write_text("1")
    assert (tmp_path / "deep" / "new" / "f").read_text() == "1"


def test_clean_stale_temps_removes_only_ours(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"keep")
    (tmp_path / ".hidden").write_text("keep")
    (tmp_path / ".notes.tmp.txt").write_text("keep: not a temp name of ours")
    (tmp_path / "user.tmp").write_text("keep")
    stale = [tmp_path / ".last.pt.ab_c1234.tmp", tmp_path / ".im.jpg.zz99yy88.tmp.jpg"]
    for p in stale:
        p.write_bytes(b"partial")
    stale_dir = tmp_path / ".model_openvino.k2k2k2k2.tmp"
    stale_dir.mkdir()
    (stale_dir / "x.bin").write_bytes(b"1")
    removed = clean_stale_temps(tmp_path)
    assert sorted(removed) == sorted(stale + [stale_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", ".notes.tmp.txt", "last.pt", "user.tmp"]
    assert clean_stale_temps(tmp_path / "absent") == []


def test_clean_stale_temps_spares_young_files(tmp_path):
    young = tmp_path / ".last.pt.abcdefgh.tmp"
    young.write_bytes(b"being written")
    assert clean_stale_temps(tmp_path, min_age_s=3600) == []
    assert young.exists()


def test_clean_stale_temps_removes_what_a_kill_left(tmp_path):
    """A kill inside the block (simulated by abandoning the generator) leaves a temp: it is cleaned."""
    p = tmp_path / "best.pt"
    cm = atomic_write(p, "wb")
    f = cm.__enter__()
    f.write(b"half")
    f.close()  # the process 'dies' here: no __exit__
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".best.pt.")]
    assert len(clean_stale_temps(tmp_path)) == 1
    assert list(tmp_path.iterdir()) == []


class _Statvfs:
    f_bavail = f_bfree = 0


@pytest.mark.parametrize("use", ["path", "write", "dir"])
def test_vague_writer_error_on_a_full_disk_names_the_cause(tmp_path, monkeypatch, use):
    """torch.save / torch.jit.save report a full disk as RuntimeError('unexpected pos ...')."""
    p = tmp_path / ("model_dir" if use == "dir" else "model.pt")
    monkeypatch.setattr(atomic.os, "statvfs", lambda folder: _Statvfs())
    cm = {"path": atomic_path, "write": atomic_write, "dir": atomic_dir}[use]
    with pytest.raises(WriteError) as ei:
        with cm(p):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    msg = one_line(ei.value)
    assert msg.startswith(f"{p}: cannot write: No space left on device (RuntimeError: ")
    assert ei.value.errno == errno.ENOSPC and leftovers(tmp_path) == [] and not p.exists()


def test_writer_error_with_free_space_passes_through(tmp_path):
    with pytest.raises(RuntimeError, match="bad graph"):
        with atomic_path(tmp_path / "m.onnx"):
            raise RuntimeError("bad graph")
    assert leftovers(tmp_path) == []


def test_real_torch_save_on_a_full_disk(tmp_path, monkeypatch):
    """The actual torch.save failure mode, end to end through atomic_write."""
    import io

    import torch

    class FullDisk(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(atomic, "open", lambda f, mode, **k: FullDisk(f, mode.replace("b", "")), raising=False)
    monkeypatch.setattr(atomic.os, "statvfs", lambda folder: _Statvfs())
    p = tmp_path / "last.pt"
    p.write_bytes(b"old")
    with pytest.raises(WriteError, match="No space left on device"):
        with atomic_write(p, "wb") as f:
            torch.save({"w": torch.zeros(100)}, f)
    assert p.read_bytes() == b"old" and leftovers(tmp_path) == []
