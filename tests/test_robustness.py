"""Hostile inputs from issue 13, one test per class: nothing hangs, explodes, slips through or is lost.

Run names with dots, symlink loops and named pipes in image folders, a float32 TIFF, a
billion-laughs yaml, a full disk during a cache write, and the one-line errors of the dataset
and conversion command lines (run as users run them, in a fresh interpreter).
"""
from __future__ import annotations

import errno
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from utils import atomic
from utils import datasets as D
from utils.data import files as data_files
from utils.data import labels as data_labels
from utils.log import LOGGER
from utils.runs import increment_path

ROOT = Path(__file__).resolve().parents[1]
NC = 2




def dataset(root: Path, n: int = 3, split: str = "train") -> Path:
    """``n`` small JPEGs with one box each under root/images/<split>; returns the image folder."""
    imgs, labels = root / "images" / split, root / "labels" / split
    imgs.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = (np.random.default_rng(i).random((48, 64, 3)) * 255).astype(np.uint8)
        assert cv2.imwrite(str(imgs / f"im{i}.jpg"), im)
        (labels / f"im{i}.txt").write_text(f"{i % NC} 0.5 0.5 0.3 0.3\n")
    return imgs


def data_yaml(tmp_path: Path, root: Path) -> Path:
    y = tmp_path / "data.yaml"
    y.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/train", "nc": NC}))
    return y


def cli(args: list[str], tmp_path: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a project command line (``-m module`` or a script) from the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "MOY_TRACEBACK"}
    env["MOYOLO_CACHE_DIR"] = str(tmp_path / "_clicache")
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=timeout)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one non-empty output line and no traceback; returns that line."""
    out = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert r.returncode != 0, out
    assert "Traceback" not in r.stderr, r.stderr
    assert len(out) == 1, out
    return out[0]


# --------------------------------------------------------------------------- never overwrite a run
def test_dotted_run_names_never_reuse_a_folder(tmp_path):
    """--name v1.0 three times gave v1.0, v1.02, v1.02: the third run replaced the second's weights."""
    for name in ("v1.0", "my.model.v2", "exp2", "run 10", "ünï.cødé"):
        runs = [increment_path(tmp_path / name) for _ in range(3)]
        assert len(set(runs)) == 3 and all(r.is_dir() for r in runs)
        assert [r.name for r in runs] == [name, f"{name}2", f"{name}3"]
    assert increment_path(tmp_path / "v1.0", exist_ok=True) == tmp_path / "v1.0"


# --------------------------------------------------------------------------- folders that loop or block
def test_symlink_loops_and_fifo_neither_hang_nor_repeat(tmp_path):
    """`loop -> .` listed each image 41 times; `up -> ../train` made the checker hang at 4 GB."""
    root = tmp_path / "ds"
    train = dataset(root)
    (train / "loop").symlink_to(".")
    (train / "up").symlink_to("../train")
    os.mkfifo(train / "pipe.jpg")  # a reader that opened this would block forever
    r = cli(["-m", "utils.datasets", "--data", str(data_yaml(tmp_path, root))], tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "train: 3 images: 3 found, 0 missing, 0 empty, 0 corrupt, 0 fixed, 1 other files skipped" in r.stdout
    assert f"skipped: {train / 'pipe.jpg'}: is not a regular file (a named pipe)" in r.stdout
    imgs, problems, skipped = D.list_image_files(train)  # in-process too, now that it is known to end
    assert sorted(Path(f).name for f in imgs) == ["im0.jpg", "im1.jpg", "im2.jpg"] and not problems


def test_fifo_in_a_txt_list_is_not_opened(tmp_path):
    root = tmp_path / "ds"
    train = dataset(root, n=2)
    os.mkfifo(train / "pipe.jpg")
    lst = root / "train.txt"
    lst.write_text("images/train/im0.jpg\nimages/train/pipe.jpg\nimages/train/im1.jpg\n")
    res = D.scan_dataset(lst, nc=NC)
    assert len(res.img_files) == 2 and res.report.corrupt == 1
    assert "listed image is not a regular file (a named pipe)" in res.report.corrupt_msgs[0]


# --------------------------------------------------------------------------- the checker and the loader agree
def test_float32_tiff_is_corrupt_not_a_mid_epoch_crash(tmp_path):
    """A float32 TIFF passed the check as 'found' and then crashed training."""
    root = tmp_path / "ds"
    train = dataset(root, n=2)
    f = np.random.default_rng(0).random((48, 64), dtype=np.float32)
    Image.fromarray(f, mode="F").save(train / "float.tif")
    (root / "labels" / "train" / "float.txt").write_text("0 0.5 0.5 0.3 0.3\n")
    res = D.scan_dataset(train, nc=NC)
    assert res.report.corrupt == 1 and len(res.img_files) == 2
    assert f"{(train / 'float.tif').resolve()}: OpenCV cannot decode" in res.report.corrupt_msgs[0]
    ds = D.LoadImagesAndLabels(train, img_size=64, batch_size=2, nc=NC)
    for i in range(len(ds)):  # everything the checker kept, training reads
        img, labels, _, _ = ds[i]
        assert img.dtype == torch.uint8 and img.shape[0] == 3


def test_decompression_bomb_is_refused_from_the_header(tmp_path, monkeypatch):
    """The pixel limit is checked before decoding, for the checker and the loader alike."""
    root = tmp_path / "ds"
    train = dataset(root, n=2)
    Image.new("L", (600, 500)).save(train / "big.png")  # stands in for a 20000 x 20000 PNG
    (root / "labels" / "train" / "big.txt").write_text("0 0.5 0.5 0.3 0.3\n")
    orig = D.check_image_size
    limited = lambda p, max_pixels=100_000: orig(p, max_pixels)  # noqa: E731
    monkeypatch.setattr(data_files, "check_image_size", limited)  # the reader's guard
    monkeypatch.setattr(data_labels, "check_image_size", limited)  # the checker's
    decoded = []
    real_imread = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda p, *a: decoded.append(Path(p).name) or real_imread(p, *a))
    res = D.scan_dataset(train, nc=NC)
    assert res.report.corrupt == 1 and "big.png: refused: 600x500" in res.report.corrupt_msgs[0]
    assert "big.png" not in decoded
    with pytest.raises(D.ImageReadError, match="refused"):
        D.read_image(train / "big.png")
    assert D.MAX_IMAGE_PIXELS < 20000 * 20000


# --------------------------------------------------------------------------- small files that explode
def test_billion_laughs_yaml_is_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    y = tmp_path / "bomb.yaml"
    y.write_text("\n".join(lines) + "\ntrain: x\nval: x\nnames: *a9\n")
    assert y.stat().st_size < 1024
    r = cli(["-m", "utils.datasets", "--data", str(y)], tmp_path, timeout=120)
    line = one_error_line(r)
    assert str(y) in line and "refused" in line and "billion laughs" in line


# --------------------------------------------------------------------------- a full disk loses nothing
def test_enospc_on_cache_write_keeps_old_cache(tmp_path, monkeypatch, _cache_dir):
    root = tmp_path / "ds"
    train = dataset(root)
    first = D.scan_dataset(train, nc=NC).report
    cache = Path(first.cache_file)
    old = cache.read_bytes()
    (root / "labels" / "train" / "im0.txt").write_text("1 0.5 0.5 0.2 0.2\n")  # the cache must be rebuilt

    class FullDisk(io.FileIO):
        """A file on a disk that fills up after 100 bytes."""

        def write(self, b):
            if self.tell() + len(b) > 100:
                super().write(bytes(b)[: max(0, 100 - self.tell())])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(b)
    monkeypatch.setattr(atomic, "open", lambda f, mode, **k: FullDisk(f, mode.replace("b", "")), raising=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    LOGGER.addHandler(handler)
    try:
        rep = D.scan_dataset(train, nc=NC).report
    finally:
        LOGGER.removeHandler(handler)
    assert rep.cache_file is None and not rep.from_cache and rep.found == 3  # the scan itself still works
    assert cache.read_bytes() == old  # the previous cache is intact
    temps = [p for d in (cache.parent, _cache_dir) if d.is_dir() for p in d.iterdir() if p.name.startswith(".")]
    assert temps == []
    warning = "\n".join(r.getMessage() for r in records)
    assert f"{cache}: cannot write: No space left on device" in warning


# --------------------------------------------------------------------------- one clear line from each CLI
def test_dataset_checker_cli_errors(tmp_path):
    line = one_error_line(cli(["-m", "utils.datasets", "--data", str(tmp_path / "none.yaml")], tmp_path))
    assert "dataset yaml not found" in line and "none.yaml" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [a, b\nval: x\n")
    line = one_error_line(cli(["-m", "utils.datasets", "--data", str(bad)], tmp_path))
    assert f"{bad}:2: invalid yaml" in line


def test_convert_cli_errors(tmp_path):
    (tmp_path / "imgs").mkdir()
    line = one_error_line(cli(["-m", "utils.data.convert", "coco", "--json", str(tmp_path / "nope.json"),
                               "--img-dir", str(tmp_path / "imgs"), "--out", str(tmp_path / "out")], tmp_path))
    assert line.startswith("python -m utils.data.convert: error: ") and "nope.json" in line
    (tmp_path / "xml").mkdir()
    line = one_error_line(cli(["-m", "utils.data.convert", "voc", "--xml-dir", str(tmp_path / "xml"),
                               "--img-dir", str(tmp_path / "imgs"), "--out", str(tmp_path / "out")], tmp_path))
    assert "no .xml files" in line


def test_shapes_cli_error(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    line = one_error_line(cli(["-m", "utils.data.shapes", "--out", str(mine), "--n-train", "2", "--n-val", "1"],
                              tmp_path))
    assert line.startswith("python -m utils.data.shapes: error: ") and "refusing to overwrite" in line
    assert (mine / "thesis.tex").read_text() == "precious"


def _damaged_checkpoints(tmp_path: Path) -> list[Path]:
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"w": torch.ones(64)}, "nc": 1}, good)
    data = good.read_bytes()
    files = {"zero.pt": b"", "truncated.pt": data[: len(data) // 2], "random.pt": os.urandom(4096)}
    for name, b in files.items():
        (tmp_path / name).write_bytes(b)
    return [tmp_path / n for n in files]


@pytest.mark.parametrize("trust", [False, True])
def test_convert_yolov7_damaged_source_is_corrupt_not_pickle(tmp_path, trust):
    """Zero-byte, truncated and random files; with --trust-pickle too (one file: it must not be unpickled)."""
    for src in _damaged_checkpoints(tmp_path)[1 if trust else 0:2 if trust else None]:
        out = tmp_path / f"{src.stem}-out.pt"
        args = ["weights/convert_yolov7.py", "--src", str(src), "--out", str(out)]
        r = cli(args + (["--trust-pickle"] if trust else []), tmp_path)
        line = [ln for ln in r.stderr.splitlines() if ln.strip()][-1]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert line.startswith("convert_yolov7.py: error: ") and str(src) in line
        assert "not a readable checkpoint (truncated/corrupt)" in line
        assert "--trust-pickle" not in line and not out.exists()
        if not trust:
            assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1 and r.stdout == ""
