"""Built-in shapes dataset: determinism, exact labels, atomic and idempotent generation."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from utils.data import shapes
from utils.data.shapes import NAMES, ensure_shapes, generate_shapes, is_complete, render_sample

SMALL = dict(n_train=6, n_val=3, seed=3, img_size=(96, 160))


def _read_labels(p: Path) -> np.ndarray:
    return np.loadtxt(p, ndmin=2).reshape(-1, 5)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_shapes(a, **SMALL)
    generate_shapes(b, **SMALL)
    generate_shapes(c, **{**SMALL, "seed": 4})
    ta, tb, tc = _tree_bytes(a), _tree_bytes(b), _tree_bytes(c)
    assert len(ta) == 2 * (6 + 3) + 1
    assert ta == tb
    assert ta["images/train/000000.jpg"] != tc["images/train/000000.jpg"]


def test_labels_valid_and_match_rendered_geometry(tmp_path):
    generate_shapes(tmp_path, **SMALL)
    for split, n in (("train", 6), ("val", 3)):
        for i in range(n):
            img = cv2.imread(str(tmp_path / "images" / split / f"{i:06d}.jpg"))
            lab = _read_labels(tmp_path / "labels" / split / f"{i:06d}.txt")
            s = render_sample(SMALL["seed"], split, i, SMALL["img_size"])
            h, w = img.shape[:2]
            assert (h, w) == s.img.shape[:2] and 96 <= min(h, w) and max(h, w) <= 160
            assert 1 <= len(lab) <= 5
            assert np.all(lab[:, 0] == s.classes) and set(lab[:, 0].astype(int)) <= set(range(len(NAMES)))
            assert np.all((lab[:, 1:] >= 0) & (lab[:, 1:] <= 1)) and np.all(lab[:, 3:] > 0)
            # written labels are the rendered boxes, normalised
            x1 = (lab[:, 1] - lab[:, 3] / 2) * w
            y1 = (lab[:, 2] - lab[:, 4] / 2) * h
            x2 = (lab[:, 1] + lab[:, 3] / 2) * w
            y2 = (lab[:, 2] + lab[:, 4] / 2) * h
            np.testing.assert_allclose(np.stack([x1, y1, x2, y2], 1), s.boxes, atol=1e-3)


def test_boxes_tight_around_drawn_pixels():
    """Each shape's visible pixels lie inside its box and reach every side within 2 px."""
    n = 0
    for i in range(40):
        s = render_sample(0, "train", i, (96, 200))
        assert len(s.classes) == len(s.boxes) == len(s.masks) >= 1
        for box, m in zip(s.boxes, s.masks):
            ys, xs = np.nonzero(m)
            assert len(xs) > 0
            vis = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
            assert vis[0] >= box[0] and vis[1] >= box[1], (i, box, vis)
            assert vis[2] <= box[2] and vis[3] <= box[3], (i, box, vis)
            assert np.abs(vis - box).max() <= 2.0, (i, box, vis)
            n += 1
    assert n >= 60


def test_object_count_and_size_fit_the_main_job():
    """1-3 objects per image, each box's long side 22-45 % of the image's short side (+-2 px raster)."""
    lo, hi = shapes._OBJ_SIZE
    counts = []
    for i in range(40):
        s = render_sample(0, "train", i)
        h, w = s.img.shape[:2]
        assert 128 <= min(h, w) and max(h, w) <= 192
        counts.append(len(s.classes))
        side = (s.boxes[:, 2:] - s.boxes[:, :2]).max(1)
        assert np.all(side >= lo * min(h, w) - 2) and np.all(side <= hi * min(h, w) + 2), (i, side, h, w)
    assert min(counts) >= 1 and max(counts) <= shapes._MAX_OBJECTS and len(set(counts)) > 1


def test_shapes_stand_out_from_background():
    """Pixels of a shape differ in colour from the ring of background just outside its box."""
    for i in range(10):
        s = render_sample(0, "val", i, (128, 192))
        img = s.img.astype(np.float32)
        any_shape = s.masks.any(0)
        for box, m in zip(s.boxes, s.masks):
            inside = img[m].mean(0)
            x1, y1, x2, y2 = box.round().astype(int)
            ring = np.zeros_like(m)
            ring[max(y1 - 6, 0):y2 + 6, max(x1 - 6, 0):x2 + 6] = True
            ring[max(y1 - 1, 0):y2 + 1, max(x1 - 1, 0):x2 + 1] = False
            ring &= ~any_shape
            if ring.sum() < 20:
                continue
            assert np.linalg.norm(inside - img[ring].mean(0)) > 25


def test_ensure_idempotent_and_regenerates_partial(tmp_path):
    root = tmp_path / "ds" / "shapes"
    ensure_shapes(root, **SMALL)
    assert is_complete(root, **SMALL)
    before = _tree_bytes(root)
    mtime = (root / "images" / "train" / "000000.jpg").stat().st_mtime_ns
    ensure_shapes(root, **SMALL)  # nothing to do: files untouched
    assert (root / "images" / "train" / "000000.jpg").stat().st_mtime_ns == mtime
    # partial deletion (an image, a label) -> regenerated, identical bytes
    (root / "images" / "val" / "000001.jpg").unlink()
    (root / "labels" / "train" / "000002.txt").unlink()
    assert not is_complete(root, **SMALL)
    ensure_shapes(root, **SMALL)
    assert _tree_bytes(root) == before
    # no temp or old folders left beside it
    assert sorted(p.name for p in root.parent.iterdir() if not p.name.endswith(".lock")) == ["shapes"]


def test_ensure_regenerates_on_marker_mismatch_and_label_cache(tmp_path):
    root = tmp_path / "shapes"
    ensure_shapes(root, **SMALL)
    before = _tree_bytes(root)
    marker = json.loads((root / shapes.MARKER).read_text())
    marker["version"] = -1  # an older generator wrote this folder
    (root / shapes.MARKER).write_text(json.dumps(marker))
    (root / "labels" / "train.cache").write_bytes(b"stale")  # a dataloader cache is allowed there
    (root / "images" / "train" / "000000.jpg").write_bytes(b"garbage")
    ensure_shapes(root, **SMALL)
    assert _tree_bytes(root) == before
    # asking for other parameters rebuilds too
    ensure_shapes(root, **{**SMALL, "n_val": 2})
    assert len(list((root / "images" / "val").iterdir())) == 2


def test_ensure_refuses_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "precious.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="refusing"):
        ensure_shapes(root, **SMALL)
    assert (root / "precious.txt").read_text() == "user data"


def test_interrupted_generation_is_not_visible(tmp_path, monkeypatch):
    root = tmp_path / "shapes"
    calls = {"n": 0}
    real = shapes.render_sample

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(shapes, "render_sample", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes(root, **SMALL)
    assert not root.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(shapes, "render_sample", real)
    ensure_shapes(root, **SMALL)
    assert is_complete(root, **SMALL)


def test_shapes_yaml_and_cli(tmp_path):
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "shapes.yaml").read_text())
    assert cfg["builtin"] == "shapes" and cfg["names"] == NAMES and cfg["nc"] == len(NAMES)
    assert cfg["train"] == "images/train" and cfg["val"] == "images/val"
    out = tmp_path / "cli"
    assert shapes.main(["--out", str(out), "--n-train", "2", "--n-val", "1", "--img-size", "64", "96"]) == 0
    assert is_complete(out, n_train=2, n_val=1, seed=0, img_size=(64, 96))


def test_check_dataset_generates_builtin(tmp_path, monkeypatch):
    """A 'builtin: shapes' yaml makes the dataset check generate the data under its 'path'."""
    import functools

    import utils.data.config
    from utils.data.config import check_dataset
    monkeypatch.setattr(utils.data.config, "ensure_shapes", functools.partial(ensure_shapes, **SMALL))  # small
    y = tmp_path / "cfg" / "shapes.yaml"
    y.parent.mkdir()
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "shapes.yaml").read_text())
    cfg["path"] = "../gen/shapes"
    y.write_text(yaml.safe_dump(cfg))
    d = check_dataset(y)
    root = (tmp_path / "gen" / "shapes").resolve()
    assert is_complete(root, **SMALL)
    assert Path(d["train"]) == root / "images" / "train" and Path(d["val"]) == root / "images" / "val"
    assert d["names"] == NAMES


def test_full_disk_keeps_old_folder_and_names_it(tmp_path, monkeypatch):
    import errno
    import os

    from utils.atomic import WriteError
    from utils.cli import one_line
    root = tmp_path / "shapes"
    ensure_shapes(root, **SMALL)
    (root / "labels" / "train" / "000000.txt").unlink()  # incomplete: will be rebuilt
    before = _tree_bytes(root)
    stale = tmp_path / ".shapes.abcd1234.tmp"  # what a killed generation leaves
    stale.mkdir()
    real = Path.write_text

    def write_text(self, *a, **k):
        if self.name == "000001.txt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(WriteError) as ei:
        ensure_shapes(root, **SMALL)
    assert _tree_bytes(root) == before
    assert str(root) in one_line(ei.value) and "No space left on device" in one_line(ei.value)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["shapes"]


@pytest.mark.parametrize("args, match", [(["--n-train", "0"], "--n-train 0: must be at least 1"),
                                         (["--n-val", "-3"], "--n-val -3: must be at least 1"),
                                         (["--img-size", "64", "16"], "--img-size 64 16: needs 32 <= MIN <= MAX")])
def test_cli_rejects_bad_sizes(tmp_path, capsys, args, match):
    from utils.cli import run_cli
    assert run_cli(shapes.main, ["--out", str(tmp_path / "x"), *args], prog="shapes") == 2
    assert capsys.readouterr().err == f"shapes: error: {match}\n"
    assert not (tmp_path / "x").exists()
