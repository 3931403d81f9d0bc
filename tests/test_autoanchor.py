"""Tests for utils/autoanchor.py: fit metrics by hand, anchor order, k-means re-fit into the model."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.yolo import Model
from utils.anchors import check_anchor_order
from utils.autoanchor import anchor_metrics, check_anchors, kmean_anchors
from utils.torch_utils import init_seeds

YOLOV7_ANCHORS = torch.tensor([[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119],
                               [116, 90], [156, 198], [373, 326]], dtype=torch.float32)


class FakeDataset:
    """What AutoAnchor reads from LoadImagesAndLabels: shapes (N, 2) (w, h), labels [(n, 5)]."""

    def __init__(self, shapes, labels):
        self.shapes = np.asarray(shapes, dtype=np.float64)
        self.labels = [np.asarray(lb, dtype=np.float32).reshape(-1, 5) for lb in labels]


@pytest.fixture(scope="module")
def model():
    return Model("cfg/training/yolov7-tiny-ms0.yaml")


def test_anchor_metrics_by_hand():
    wh = torch.tensor([[32.0, 32.0], [10.0, 10.0], [600.0, 20.0]])
    # 32x32 fits 7 anchors (all but 156x198 and 373x326: 32/156 < 1/4), 10x10 fits 3
    # (10x13, 16x30, 33x23), 600x20 fits none (no anchor is both >= 150 wide and <= 80 high)
    bpr, aat = anchor_metrics(wh, YOLOV7_ANCHORS, thr=4.0)
    assert bpr == pytest.approx(2 / 3)
    assert aat == pytest.approx(10 / 3)
    assert anchor_metrics(wh[:2], YOLOV7_ANCHORS, thr=4.0)[0] == 1.0
    # a looser threshold serves the long box too (600/373 = 1.6, 326/20 = 16.3 < 20)
    assert anchor_metrics(wh, YOLOV7_ANCHORS, thr=20.0)[0] == 1.0


def test_check_anchors_good_fit_keeps_anchors(model):
    init_seeds(0)
    # 640x480 images, 20 labels each of 60x60 .. 100x100 px at imgsz 640: all served
    rng = np.random.default_rng(0)
    labels = [np.column_stack([np.zeros(20), rng.uniform(0.2, 0.8, (20, 2)),
                               rng.uniform(60, 100, (20, 1)) / 640, rng.uniform(60, 100, (20, 1)) / 480])
              for _ in range(4)]
    ds = FakeDataset([[640, 480]] * 4, labels)
    before = model.model[-1].anchors.clone()
    assert check_anchors(ds, model, thr=4.0, imgsz=640) is False
    assert torch.equal(model.model[-1].anchors, before)


def mismatched_dataset(n_img=30, per_img=12, seed=0):
    """Long thin horizontal and vertical boxes and tiny squares: YOLOv7's anchors fit poorly."""
    rng = np.random.default_rng(seed)
    labels = []
    for _ in range(n_img):
        kind = rng.integers(0, 3, per_img)
        w = np.where(kind == 0, rng.uniform(0.7, 0.9, per_img), np.where(kind == 1, 0.02, 0.006))
        h = np.where(kind == 0, 0.02, np.where(kind == 1, rng.uniform(0.7, 0.9, per_img), 0.006))
        labels.append(np.column_stack([kind, np.full(per_img, 0.5), np.full(per_img, 0.5), w, h]))
    return FakeDataset([[640, 640]] * n_img, labels)


def test_kmeans_improves_mismatched_fit(model):
    init_seeds(0)
    model = copy.deepcopy(model)
    det = model.model[-1]
    ds = mismatched_dataset()
    wh = torch.tensor(np.concatenate([lb[:, 3:5] * 640 for lb in ds.labels]), dtype=torch.float32)
    bpr0 = anchor_metrics(wh, det.anchor_grid.view(-1, 2), 4.0)[0]
    assert bpr0 < 0.9
    assert check_anchors(ds, model, thr=4.0, imgsz=640) is True
    new = det.anchor_grid.view(-1, 2)
    bpr1 = anchor_metrics(wh, new, 4.0)[0]
    assert bpr1 > bpr0 and bpr1 >= 0.98
    # both buffers agree (anchors in stride units), sorted small -> large like the strides
    assert torch.allclose(det.anchors * det.stride.view(-1, 1, 1), det.anchor_grid.view(3, 3, 2))
    areas = new.prod(1)
    assert torch.all(areas[1:] >= areas[:-1])
    # the new anchors are in the state dict (so in checkpoints) and the model still runs
    sd = model.state_dict()
    key = next(k for k in sd if k.endswith("anchor_grid"))
    assert torch.equal(sd[key], det.anchor_grid)
    model.eval()
    with torch.no_grad():
        out, _ = model(torch.zeros(1, 3, 64, 64))
    assert out.shape[-1] == det.no


def test_kmean_anchors_direct_and_too_few(model):
    init_seeds(1)
    k = kmean_anchors(mismatched_dataset(10, 6, seed=3), n=9, img_size=320, thr=4.0, gen=200, verbose=True)
    assert k.shape == (9, 2) and (k >= 2.0).all()
    assert np.all(np.diff(k.prod(1)) >= 0)
    few = FakeDataset([[640, 640]], [[[0, 0.5, 0.5, 0.9, 0.01]]])
    with pytest.raises(ValueError, match="too few"):
        kmean_anchors(few, n=9)
    before = model.model[-1].anchors.clone()
    assert check_anchors(few, model) is False  # re-fit failed: warns, keeps anchors
    assert torch.equal(model.model[-1].anchors, before)


def test_check_anchor_order(model):
    m = copy.deepcopy(model).model[-1]
    good_a, good_g = m.anchors.clone(), m.anchor_grid.clone()
    m.anchors[:] = m.anchors.flip(0)
    m.anchor_grid[:] = m.anchor_grid.flip(0)
    check_anchor_order(m)
    assert torch.equal(m.anchors, good_a) and torch.equal(m.anchor_grid, good_g)
    check_anchor_order(m)  # already in order: untouched
    assert torch.equal(m.anchors, good_a)


def test_bad_dataset_shapes(model):
    ds = FakeDataset([[640, 640]] * 2, [[[0, 0.5, 0.5, 0.1, 0.1]]])
    with pytest.raises(ValueError, match="shapes"):
        check_anchors(ds, model)


def test_kmean_anchors_from_yaml(coco128_dir):
    from pathlib import Path
    init_seeds(0)
    yaml_path = Path(__file__).resolve().parents[1] / "data" / "coco128.yaml"
    k = kmean_anchors(str(yaml_path), n=9, img_size=320, thr=4.0, gen=50, verbose=False)
    assert k.shape == (9, 2) and np.all(np.diff(k.prod(1)) >= 0)
    assert 2.0 <= k.min() and k.max() <= 320 * 1.5
