"""utils/runs.py: fresh run folders (increment_path); resumed runs write only into their own run folder and
resume falls back to what exists."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from utils import runs
from utils.runs import find_resume_checkpoint, increment_path, lives_in_run_dir, resume_candidates, resume_save_dir


def _run(root: Path, rel: str = "runs/train/exp") -> Path:
    wdir = root / rel / "weights"
    wdir.mkdir(parents=True)
    (wdir / "last.pt").write_bytes(b"x")
    return root / rel


def test_checkpoint_in_its_recorded_folder_resumes_there(tmp_path, monkeypatch):
    run = _run(tmp_path)
    ck = {"opt": {"save_dir": str(run)}}
    assert resume_save_dir(run / "weights" / "last.pt", ck, tmp_path / "runs/train", "exp") == run.resolve()
    monkeypatch.chdir(tmp_path)  # recorded relative to the working directory the run started in
    ck = {"opt": {"save_dir": "runs/train/exp"}}
    assert resume_save_dir("runs/train/exp/weights/last.pt", ck, "runs/train", "exp") == run.resolve()
    monkeypatch.chdir(run / "weights")  # resumed from another working directory: still its own folder
    assert resume_save_dir("last.pt", ck, tmp_path / "runs/train", "exp") == run.resolve()


def test_copied_checkpoint_gets_a_new_folder(tmp_path, monkeypatch):
    run = _run(tmp_path)
    downloads = tmp_path / "home" / "Downloads"
    downloads.mkdir(parents=True)
    (downloads / "last.pt").write_bytes(b"x")
    (downloads / "results.csv").write_text("mine\n")
    ck = {"opt": {"save_dir": str(run)}}
    project = tmp_path / "runs" / "train"
    new = resume_save_dir(downloads / "last.pt", ck, project, "exp")
    assert new == project / "exp2" and new.is_dir() and list(new.iterdir()) == []
    assert sorted(p.name for p in downloads.iterdir()) == ["last.pt", "results.csv"]
    # a copy inside some other run's weights/ (or a look-alike folder) is not its run folder either
    other = _run(tmp_path, "runs/train/exp3")
    assert resume_save_dir(other / "weights" / "last.pt", ck, project, "exp") == project / "exp4"
    fake = _run(tmp_path / "home", "exp")  # same last component, different path
    monkeypatch.chdir(tmp_path)
    assert resume_save_dir(fake / "weights" / "last.pt", {"opt": {"save_dir": "runs/train/exp"}}, project,
                           "exp") == project / "exp5"
    # no recorded folder at all (or junk): a new folder too
    for bad in ({}, {"opt": None}, {"opt": {"save_dir": ""}}, {"opt": {"save_dir": ["x"]}}):
        assert resume_save_dir(run / "weights" / "last.pt", bad, project, "r").parent == project


def test_lives_in_run_dir_edge_cases(tmp_path):
    run = _run(tmp_path)
    assert lives_in_run_dir(run / "weights" / "last.pt", run)
    assert not lives_in_run_dir(run / "last.pt", run)
    assert not lives_in_run_dir(run / "weights" / "last.pt", tmp_path / "runs/train/exp2")
    assert not lives_in_run_dir(run / "weights" / "last.pt", "../train/exp")
    assert not lives_in_run_dir(run / "weights" / "last.pt", ".")
    link = tmp_path / "link"
    link.symlink_to(run, target_is_directory=True)
    assert lives_in_run_dir(link / "weights" / "last.pt", run)  # resolved


def test_resume_candidates_order_and_temp_files(tmp_path):
    w = tmp_path / "weights"
    assert resume_candidates(w) == []
    w.mkdir()
    (w / ".last.pt.abc123.pt.tmp").write_bytes(b"partial")
    (w / "best.pt").write_bytes(b"b")
    assert resume_candidates(w) == [w / "best.pt"]  # killed during the first save of last.pt
    (w / "last.pt").write_bytes(b"")  # empty: not a candidate
    assert resume_candidates(w) == [w / "best.pt"]
    (w / "last.pt").write_bytes(b"l")
    (w / "epoch_002.pt").write_bytes(b"e")
    (w / "epoch_010.pt").write_bytes(b"e")
    (w / "epoch_x.pt").write_bytes(b"e")
    (w / "dir.pt").mkdir()
    assert resume_candidates(w) == [w / "last.pt", w / "best.pt", w / "epoch_010.pt", w / "epoch_002.pt"]


@pytest.mark.parametrize("first_save_killed", [False, True])
def test_find_resume_checkpoint_picks_latest_run(tmp_path, first_save_killed):
    assert find_resume_checkpoint(tmp_path / "none") is None
    old, new = _run(tmp_path, "runs/train/exp"), _run(tmp_path, "runs/train/exp2")
    t = time.time()
    os.utime(old / "weights" / "last.pt", (t - 100, t - 100))
    if first_save_killed:
        (new / "weights" / "last.pt").unlink()
        (new / "weights" / ".last.pt.x.pt.tmp").write_bytes(b"partial")
        (new / "weights" / "best.pt").write_bytes(b"b")
    want = new / "weights" / ("best.pt" if first_save_killed else "last.pt")
    assert find_resume_checkpoint(tmp_path / "runs") == want


# --------------------------------------------------------------------------- increment_path
NAMES = ["exp", "v1.0", "my run", "résumé-試験", "exp2", "run10", "a.b.c", "model.pt", "x[1]*?", "-dash", "007"]


@pytest.mark.parametrize("name", NAMES)
def test_increment_path_gives_fresh_folders(tmp_path, name):
    got = [increment_path(tmp_path / name) for _ in range(4)]
    assert [p.name for p in got] == [name, f"{name}2", f"{name}3", f"{name}4"]
    assert all(p.is_dir() and p.parent == tmp_path for p in got)
    assert len(set(got)) == 4


def test_increment_path_dotted_name_regression(tmp_path):
    """v1.0 -> v1.0, v1.02, v1.03 (YOLOv7's stem-based numbering gave v1.02 twice)."""
    a, b, c = (increment_path(tmp_path / "v1.0") for _ in range(3))
    assert (a.name, b.name, c.name) == ("v1.0", "v1.02", "v1.03")
    (b / "weights").mkdir()
    assert increment_path(tmp_path / "v1.0").name == "v1.04"


def test_increment_path_numbers_after_the_highest(tmp_path):
    for n in ("exp", "exp7", "exp3", "expx", "exp_9", "other12"):
        (tmp_path / n).mkdir()
    assert increment_path(tmp_path / "exp").name == "exp8"
    assert increment_path(tmp_path / "exp", sep="_").name == "exp_10"
    (tmp_path / "taken").write_text("a file")  # a file of that name is taken too
    assert increment_path(tmp_path / "taken").name == "taken2"


def test_increment_path_trailing_digits_never_collide(tmp_path):
    """'run1' and 'run' series share names like run12: whatever exists is skipped."""
    for _ in range(12):
        increment_path(tmp_path / "run")  # run, run2 .. run12
    first = increment_path(tmp_path / "run1")
    second = increment_path(tmp_path / "run1")
    assert first.name == "run1" and second.name == "run13"
    assert increment_path(tmp_path / "run").name == "run14"


def test_increment_path_exist_ok_and_nested(tmp_path):
    p = increment_path(tmp_path / "exp")
    assert increment_path(tmp_path / "exp", exist_ok=True) == p
    nested = increment_path(tmp_path / "new" / "deep" / "exp")
    assert nested.is_dir() and nested.name == "exp"
    with pytest.raises(FileExistsError):  # exist_ok re-uses a folder, never a file
        (tmp_path / "f").write_text("x")
        increment_path(tmp_path / "f", exist_ok=True)
    with pytest.raises(ValueError, match="no name"):
        increment_path(tmp_path / "..")


def test_increment_path_without_mkdir(tmp_path):
    assert increment_path(tmp_path / "exp", mkdir=False) == tmp_path / "exp"
    assert not (tmp_path / "exp").exists()
    (tmp_path / "exp").mkdir()
    assert increment_path(tmp_path / "exp", mkdir=False).name == "exp2"


def test_increment_path_concurrent_runs_get_distinct_folders(tmp_path, monkeypatch):
    """Runs that list the folder at the same moment still create different folders."""
    (tmp_path / "exp").mkdir()
    barrier = threading.Barrier(6)
    real = runs._taken_numbers

    def slow_taken(*a):  # every thread computes its number before any of them creates a folder
        r = real(*a)
        barrier.wait(timeout=10)
        return r
    monkeypatch.setattr(runs, "_taken_numbers", slow_taken)
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(increment_path(tmp_path / "exp"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 6 and len(set(out)) == 6
    assert sorted(p.name for p in out) == sorted(f"exp{i}" for i in range(2, 8))
