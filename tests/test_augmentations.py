"""Tests for utils/data/augment.py: letterbox, hyp checks, and boxes that stay on their objects.

The box-consistency tests draw solid boxes of distinct colours (one class per colour),
augment (mosaic, perspective, flips) and check that each returned box is the tight box of
its colour's pixels (every edge within a few px), and that every visible object either has its box or was cut off at the
image border (YOLOv7 drops boxes that lose most of their area).
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.boxes import xywhn2xyxy
from utils.data.augment import augment_hsv, box_candidates, check_hyp, flip_labels, letterbox, random_perspective
from utils.data.dataset import LoadImagesAndLabels
from utils.hyp import HypError
from utils.log import LOGGER
from utils.torch_utils import init_seeds

COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0),
           (0, 128, 255), (255, 128, 0)]  # BGR, class i <-> COLOURS[i]


@pytest.fixture
def capture_warnings():
    records = []

    class H(logging.Handler):
        def emit(self, r):
            records.append(r.getMessage())

    h = H()
    LOGGER.addHandler(h)
    old = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    yield records
    LOGGER.removeHandler(h)
    LOGGER.setLevel(old)


# --------------------------------------------------------------------------- letterbox
def test_letterbox_shapes_and_padding():
    img = np.zeros((50, 100, 3), np.uint8)
    out, ratio, pad = letterbox(img, 64, auto=False)
    assert out.shape == (64, 64, 3) and ratio == (0.64, 0.64) and pad == (0.0, 16.0)
    assert (out[:16] == 114).all() and (out[16:48] == 0).all() and (out[48:] == 114).all()
    out, _, pad = letterbox(img, 64, auto=True, stride=32)
    assert out.shape == (32, 64, 3) and pad == (0.0, 0.0)
    out, _, pad = letterbox(np.zeros((30, 70, 3), np.uint8), 64, auto=True, stride=32)
    assert out.shape == (32, 64, 3)  # 27 px of image -> next multiple of 32
    out, ratio, pad = letterbox(img, (64, 64), auto=False, scaleFill=True)
    assert out.shape == (64, 64, 3) and ratio == (0.64, 1.28) and pad == (0.0, 0.0)
    small = np.zeros((20, 40, 3), np.uint8)
    out, ratio, pad = letterbox(small, 64, auto=False, scaleup=False)
    assert ratio == (1.0, 1.0) and out.shape == (64, 64, 3) and pad == (12.0, 22.0)
    out, _, pad = letterbox(np.zeros((21, 41, 3), np.uint8), 64, auto=False, scaleup=False)
    assert out.shape == (64, 64, 3) and pad == (11.5, 21.5)  # odd padding split 11/12 and 21/22


# --------------------------------------------------------------------------- hyp
def test_check_hyp(capture_warnings):
    h = check_hyp({"hsv_h": 0.1, "mosaic": 1.0, "copy_paste": 0.3, "paste_in": 0.1, "lr0": 0.01, "bogus": 1})
    assert h["copy_paste"] == 0 and h["paste_in"] == 0 and h["hsv_h"] == 0.1 and h["lr0"] == 0.01
    assert h["fliplr"] == 0.0 and h["degrees"] == 0.0  # missing keys are off ...
    text = "\n".join(capture_warnings)
    assert "hyp has no hsv_s, hsv_v, degrees" in text  # ... and said so
    assert "unknown hyp keys ignored: bogus" in text
    warned = [w for w in capture_warnings if w.startswith("WARNING")]
    assert not any("paste" in w for w in warned)  # segment-only keys: no-ops on boxes, not warnings
    assert "lr0" not in text.split("unknown hyp keys ignored:")[1]
    with pytest.raises(HypError, match=r"hyp: mosaic: must be a finite number >= 0 and <= 1 \(got 1.5\)"):
        check_hyp({"mosaic": 1.5})
    with pytest.raises(HypError, match="hyp: degrees: must be a finite number"):
        check_hyp({"degrees": float("nan")})
    with pytest.raises(HypError, match="hyp: scale: must be a finite number .* 'big'"):
        check_hyp({"scale": "big"})


def test_shipped_hyps_all_known(capture_warnings):
    root = Path(__file__).resolve().parents[1] / "data"
    import yaml
    for name in ("hyp.scratch.tiny.yaml", "hyp.scratch.p5.yaml", "hyp.shapes.yaml"):
        capture_warnings.clear()
        h = yaml.safe_load((root / name).read_text())
        h.pop("base", None)
        check_hyp(h)
        warned = [w for w in capture_warnings if w.startswith("WARNING")]
        assert warned == [] or name == "hyp.shapes.yaml" and all("hyp has no" in w for w in warned)


# --------------------------------------------------------------------------- elementary transforms
def test_hsv_zero_gain_is_identity_and_nonzero_changes():
    img = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    a = img.copy()
    augment_hsv(a, 0, 0, 0)
    np.testing.assert_array_equal(a, img)
    np.random.seed(0)
    augment_hsv(a, 0.5, 0.5, 0.5)
    assert not np.array_equal(a, img) and a.dtype == np.uint8


def test_random_perspective_identity_and_translate():
    img = np.zeros((40, 60, 3), np.uint8)
    t = np.array([[1, 10, 5, 30, 25]], float)
    out, t2 = random_perspective(img, t.copy(), degrees=0, translate=0, scale=0, shear=0)
    assert out is img and np.allclose(t2, t)  # identity: no warp


def test_box_candidates_and_flip():
    before = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 4]], float).T
    after = np.array([[0, 0, 10, 10], [0, 0, 2, 10], [0, 0, 3, 3], [0, 0, 100, 4]], float).T
    assert box_candidates(before, after).tolist() == [True, False, False, False]
    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    lab = np.array([[0, 0.25, 0.1, 0.2, 0.2]])
    random.seed(0)
    img2, lab2 = flip_labels(lab.copy(), img, {"flipud": 1.0, "fliplr": 1.0})
    np.testing.assert_array_equal(img2, img[::-1, ::-1])
    np.testing.assert_allclose(lab2, [[0, 0.75, 0.9, 0.2, 0.2]])


# --------------------------------------------------------------------------- boxes stay on their objects
def _colour_dataset(root: Path, n_img=4, size=(128, 160)) -> Path:
    """n_img images, 2 solid boxes each, every box its own class and colour on a dark background."""
    rng = np.random.default_rng(0)
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    cls = 0
    for i in range(n_img):
        h, w = size
        img = np.full((h, w, 3), 30, np.uint8)
        lines = []
        for k in range(2):
            bw, bh = int(rng.integers(34, 60)), int(rng.integers(34, 60))
            x1 = int(rng.integers(5, w // 2 - bw // 2)) if k == 0 else int(rng.integers(w // 2 + 5, w - bw - 5))
            y1 = int(rng.integers(5, h - bh - 5))
            img[y1:y1 + bh, x1:x1 + bw] = COLOURS[cls]
            lines.append(f"{cls} {(x1 + bw / 2) / w} {(y1 + bh / 2) / h} {bw / w} {bh / h}")
            cls += 1
        cv2.imwrite(str(root / "images" / "train" / f"{i}.png"), img)
        (root / "labels" / "train" / f"{i}.txt").write_text("\n".join(lines) + "\n")
    return root / "images" / "train"


def _edge_err(a, b) -> float:
    """Largest distance (px) between corresponding edges of two xyxy boxes."""
    return float(max(abs(a[k] - b[k]) for k in range(4)))


TOL = 3.0  # px: interpolation blurs the edges of warped objects by a pixel or two


def _check_item(img: torch.Tensor, labels: torch.Tensor) -> int:
    """Assert boxes match their colours' pixels; return the number of boxes checked."""
    bgr = img.permute(1, 2, 0).numpy()[..., ::-1].astype(int)
    H, W = bgr.shape[:2]
    boxes = xywhn2xyxy(labels[:, 2:].numpy().astype(float), W, H)
    classes = labels[:, 1].long().tolist()
    matched = 0
    for c, colour in enumerate(COLOURS):
        mask = (np.abs(bgr - np.array(colour)).max(-1) < 60).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        comps = [(x, y, x + w, y + h, a) for x, y, w, h, a in stats[1:]]
        cboxes = [b for b, k in zip(boxes, classes) if k == c]
        for b in cboxes:  # every box sits tightly on a blob of its own colour
            # a sliver cut by the image border loses its anti-aliased tip to the colour threshold
            tol = TOL if (b[0] > 1 and b[1] > 1 and b[2] < W - 1 and b[3] < H - 1) else 2 * TOL
            best = min((_edge_err(b, comp) for comp in comps), default=np.inf)
            assert best < tol, f"class {c} box {b.round(1)} is not on its colour (edges off by {best:.1f} px)"
            matched += 1
        for comp in comps:  # every sizeable blob has its box, unless it was cut at the border
            if comp[4] < 30:
                continue
            best = min((_edge_err(b, comp) for b in cboxes), default=np.inf)
            at_border = comp[0] <= 1 or comp[1] <= 1 or comp[2] >= W - 1 or comp[3] >= H - 1
            assert best < TOL or at_border, f"class {c} object {comp} has no box"
    return matched


@pytest.mark.parametrize("mode", ["mosaic", "perspective"])
def test_augmented_boxes_cover_coloured_pixels(tmp_path, mode):
    src = _colour_dataset(tmp_path / "ds")
    hyp = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=15.0, translate=0.1, scale=0.3, shear=5.0,
               perspective=0.0005, flipud=0.5, fliplr=0.5, mosaic=1.0 if mode == "mosaic" else 0.0, mixup=0.0,
               copy_paste=0.0, paste_in=0.0)
    ds = LoadImagesAndLabels(src, img_size=128, batch_size=4, augment=True, hyp=hyp, nc=len(COLOURS))
    init_seeds(0)
    checked = 0
    for _ in range(6):
        for i in range(len(ds)):
            img, labels, _, shapes = ds[i]
            assert img.shape == (3, 128, 128)
            assert (shapes is None) == (mode == "mosaic")
            checked += _check_item(img, labels)
    assert checked >= 20


def test_mixup_keeps_both_label_sets(tmp_path):
    src = _colour_dataset(tmp_path / "ds")
    hyp = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=0.0, translate=0.0, scale=0.0, shear=0.0,
               perspective=0.0, flipud=0.0, fliplr=0.0, mosaic=1.0, mixup=1.0, copy_paste=0.0, paste_in=0.0)
    ds = LoadImagesAndLabels(src, img_size=128, augment=True, hyp=hyp, nc=len(COLOURS))
    init_seeds(1)
    img, labels, _, _ = ds[0]
    init_seeds(1)
    ds.hyp = dict(hyp, mixup=0.0)
    img1, labels1, _, _ = ds[0]
    assert len(labels) > len(labels1) and torch.equal(labels[: len(labels1)], labels1)
    assert not torch.equal(img, img1)


def test_clipped_polygon_box():
    from utils.data.augment import clipped_polygon_box
    tilted = np.array([[-20, 10], [10, 40], [0, 50], [-30, 20]], float)  # mostly left of x = 0
    # visible part: (0, 30), (10, 40), (0, 50); clipping the corners instead would give y from 10
    np.testing.assert_allclose(clipped_polygon_box(tilted, 100, 100), [0, 30, 10, 50])
    inside = np.array([[10, 10], [30, 10], [30, 30], [10, 30]], float)
    np.testing.assert_allclose(clipped_polygon_box(inside, 100, 100), [10, 10, 30, 30])
    outside = inside - 200
    np.testing.assert_allclose(clipped_polygon_box(outside, 100, 100), [0, 0, 0, 0])
