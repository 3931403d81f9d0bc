"""--image-weights (utils.general.labels_to_image_weights) and --quad (LoadImagesAndLabels.collate_fn4)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from utils.boxes import xywh2xyxy
from utils.data.dataset import LoadImagesAndLabels
from utils.data.labels import labels_to_image_weights


def test_image_weights_sum_class_weights_per_label():
    labels = [np.array([[0, .5, .5, .1, .1], [2, .5, .5, .1, .1], [2, .2, .2, .1, .1]]),
              np.zeros((0, 5)), np.array([[1, .5, .5, .2, .2]])]
    np.testing.assert_allclose(labels_to_image_weights(labels, nc=3), [3, 0, 1])  # default: label count
    w = labels_to_image_weights(labels, nc=3, class_weights=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(w, [1 + 3 + 3, 0, 2])
    wt = labels_to_image_weights(labels, nc=3, class_weights=torch.tensor([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(wt, w)
    idx = random.Random(0).choices(range(3), weights=w, k=200)
    assert 1 not in idx and idx.count(0) > idx.count(2)  # unlabelled image never drawn, rare class drawn less
    with pytest.raises(ValueError, match="label class 3 outside 0-2"):
        labels_to_image_weights([np.array([[3, .5, .5, .1, .1]])], nc=3)
    with pytest.raises(ValueError, match="nc=3"):
        labels_to_image_weights(labels, nc=3, class_weights=np.ones(4))


def _item(k: int, size: int = 32):
    """A grey CHW uint8 image with one white box; target [0, cls, x, y, w, h] normalised."""
    img = torch.full((3, size, size), 50, dtype=torch.uint8)
    x0, y0, bw, bh = 4 + 2 * k, 6 + k, 8 + k, 10 - k
    img[:, y0:y0 + bh, x0:x0 + bw] = 255
    t = torch.tensor([[0, k, (x0 + bw / 2) / size, (y0 + bh / 2) / size, bw / size, bh / size]])
    return img, t, f"im{k}.jpg", None


def _box_pixels(img: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    h, w = img.shape[1:]
    x1, y1, x2, y2 = (xywh2xyxy(t[None, 2:]) * torch.tensor([w, h, w, h]))[0].round().int().tolist()
    return img[:, y1:y2, x1:x2]


def test_quad_collate_tiles_and_moves_targets(monkeypatch):
    batch = [_item(k) for k in range(9)]  # 2 groups of 4, the 9th image is dropped (as YOLOv7)
    monkeypatch.setattr(random, "random", lambda: 0.9)  # always tile
    imgs, targets, paths, shapes = LoadImagesAndLabels.collate_fn4(batch)
    assert imgs.shape == (2, 3, 64, 64) and imgs.dtype == torch.uint8 and paths == ("im0.jpg", "im4.jpg")
    assert targets.shape == (8, 6) and targets[:, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    for t in targets:
        i = int(t[0])
        box = _box_pixels(imgs[i], t)
        assert box.numel() and (box == 255).all()  # each moved target covers its white box exactly
        k = int(t[1])
        expect = batch[k][1][0, 4:] / 2
        torch.testing.assert_close(t[4:], expect)
    assert (imgs[0, :, :32, :32] == batch[0][0]).all() and (imgs[0, :, 32:, :32] == batch[1][0]).all()
    assert (imgs[0, :, :32, 32:] == batch[2][0]).all() and (imgs[0, :, 32:, 32:] == batch[3][0]).all()


def test_quad_collate_upsample_path_and_small_batches(monkeypatch):
    monkeypatch.setattr(random, "random", lambda: 0.1)  # always upsample the first image of a group
    batch = [_item(k) for k in range(4)]
    imgs, targets, paths, _ = LoadImagesAndLabels.collate_fn4(batch)
    assert imgs.shape == (1, 3, 64, 64) and paths == ("im0.jpg",)
    torch.testing.assert_close(targets, batch[0][1])  # normalised targets unchanged
    inner = _box_pixels(imgs[0], targets[0])[:, 1:-1, 1:-1]  # bilinear edges blend with the grey
    assert inner.numel() and (inner >= 250).all() and imgs[0].float().mean() < 100
    imgs, targets, paths, _ = LoadImagesAndLabels.collate_fn4([_item(1), _item(2)])  # fewer than 4: no crash
    assert imgs.shape == (2, 3, 64, 64) and targets[:, 0].tolist() == [0, 1] and paths == ("im1.jpg", "im2.jpg")
