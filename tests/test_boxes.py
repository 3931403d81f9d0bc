"""utils/boxes.py: non_max_suppression (the conversions are exercised by their users' tests)."""
from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from utils.boxes import non_max_suppression, xywh2xyxy
from utils.log import LOGGER


def make_pred(boxes_xywh, obj, cls_scores):
    """(1, n, 5 + nc) decoded prediction from lists."""
    return torch.cat([torch.tensor(boxes_xywh, dtype=torch.float32), torch.tensor(obj)[:, None],
                      torch.tensor(cls_scores, dtype=torch.float32)], 1)[None]


def test_nms_suppresses_overlaps_within_a_class():
    p = make_pred([[50, 50, 20, 20], [51, 50, 20, 20], [150, 150, 20, 20]], [0.9, 0.8, 0.7],
                  [[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    out = non_max_suppression(p, 0.25, 0.45)
    assert len(out) == 1 and out[0].shape == (2, 6)
    assert out[0][:, 4].tolist() == pytest.approx([0.81, 0.63])  # obj * cls, sorted
    assert torch.allclose(out[0][0, :4], torch.tensor([40.0, 40, 60, 60]))
    assert out[0][:, 5].tolist() == [0, 0]


def test_nms_per_class_and_agnostic():
    p = make_pred([[50, 50, 20, 20], [51, 50, 20, 20]], [0.9, 0.8], [[0.9, 0.1], [0.1, 0.9]])
    assert non_max_suppression(p, 0.25, 0.45)[0].shape[0] == 2  # different classes both stay
    assert non_max_suppression(p, 0.25, 0.45, agnostic=True)[0].shape[0] == 1


def test_nms_multi_label_and_classes_filter():
    p = make_pred([[50, 50, 20, 20]], [1.0], [[0.6, 0.5, 0.01]])
    assert non_max_suppression(p, 0.25, 0.45)[0].shape[0] == 1
    out = non_max_suppression(p, 0.25, 0.45, multi_label=True)[0]
    assert sorted(out[:, 5].tolist()) == [0, 1]
    out = non_max_suppression(p, 0.25, 0.45, multi_label=True, classes=[1])[0]
    assert out[:, 5].tolist() == [1]


def test_nms_single_class_uses_objectness():
    p = make_pred([[50, 50, 20, 20]], [0.7], [[0.1]])
    out = non_max_suppression(p, 0.25, 0.45)[0]
    assert out.shape == (1, 6) and out[0, 4].item() == pytest.approx(0.7)


def test_nms_labels_for_autolabelling():
    p = torch.zeros(1, 4, 7)  # nothing above threshold
    labels = [torch.tensor([[1.0, 30, 30, 10, 10]])]
    out = non_max_suppression(p, 0.25, 0.45, labels=labels)[0]
    assert out.shape == (1, 6)
    assert out[0].tolist() == pytest.approx([25, 25, 35, 35, 1.0, 1])


def test_nms_empty_and_batch():
    p = torch.zeros(3, 10, 85)
    out = non_max_suppression(p, 0.001, 0.65, multi_label=True)
    assert len(out) == 3 and all(o.shape == (0, 6) for o in out)


def test_nms_max_det_and_candidate_cap_match_reference():
    torch.manual_seed(0)
    p = torch.rand(2, 3000, 12)
    p[..., :2] *= 640
    p[..., 2:4] = p[..., 2:4] * 100 + 2
    out = non_max_suppression(p, 0.001, 0.65, multi_label=True, max_det=300)
    assert [o.shape[0] for o in out] == [300, 300]
    assert (out[0][:-1, 4] >= out[0][1:, 4]).all()
    # reference: torchvision NMS per class on every candidate, no cap hit here (3000 * 7 < 30000)
    x = p[0]
    scores = x[:, 5:] * x[:, 4:5]
    i, j = (scores > 0.001).nonzero(as_tuple=True)
    boxes, conf = xywh2xyxy(x[:, :4])[i], scores[i, j]
    keep = torchvision.ops.batched_nms(boxes, conf, j, 0.65)[:300]
    assert torch.allclose(out[0][:, 4], conf[keep])
    # the candidate cap keeps the highest scores: a smaller cap still returns top boxes
    capped = non_max_suppression(p, 0.001, 0.65, multi_label=True, max_nms=1000)
    assert capped[0][0, 4] == out[0][0, 4]


def test_nms_time_limit_only_warns(caplog):
    torch.manual_seed(0)
    p = torch.rand(1, 2000, 10)
    p[..., :4] *= 100
    ref = non_max_suppression(p, 0.001, 0.65, multi_label=True)
    LOGGER.addHandler(caplog.handler)  # the project logger may not propagate to root
    try:
        with caplog.at_level(logging.WARNING, logger="moyolo"):
            out = non_max_suppression(p, 0.001, 0.65, multi_label=True, time_limit=0.0)
    finally:
        LOGGER.removeHandler(caplog.handler)
    assert "time limit" in caplog.text
    assert torch.equal(out[0], ref[0])  # nothing was dropped


def test_nms_rejects_bad_input():
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(torch.zeros(1, 4, 7), conf_thres=2)
    with pytest.raises(ValueError, match="5 \\+ nc"):
        non_max_suppression(torch.zeros(4, 7))
