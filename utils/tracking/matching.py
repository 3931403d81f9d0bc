"""Association costs between tracks and detections, and the thresholded assignment.

Costs are ``1 - IoU`` (optionally fused with the detection score as ByteTrack and BoT-SORT do:
``1 - IoU * score``, so a confident detection wins a tie). The assignment solves, with SciPy's
Hungarian solver, the problem the trackers' papers state: match track i to detection j only
when ``cost[i, j] <= thresh``, leaving a track or a detection unmatched costs ``thresh / 2``
each; i.e. maximise the sum of ``thresh - cost`` over the matched pairs.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of corner boxes ``a`` (n, 4) and ``b`` (m, 4); degenerate boxes give 0."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), 1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), 1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou_cost(track_boxes: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray | None = None) -> np.ndarray:
    """``1 - IoU`` (n, m); with ``det_scores`` the score-fused ``1 - IoU * score``."""
    iou = iou_matrix(track_boxes, det_boxes)
    if det_scores is not None and iou.size:
        iou = iou * np.asarray(det_scores, np.float64)[None, :]
    return 1.0 - iou


def assign(cost: np.ndarray, thresh: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(matches (k, 2) of [row, col], unmatched rows, unmatched cols) for ``cost`` (n, m).

    A pair is matched only when its cost is at most ``thresh``; among such matchings the one with
    the largest sum of ``thresh - cost`` is taken.
    """
    n, m = cost.shape
    if not n or not m:
        return np.zeros((0, 2), int), np.arange(n), np.arange(m)
    gain = np.where(cost <= thresh, thresh - cost, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    keep = cost[rows, cols] <= thresh
    matches = np.stack((rows[keep], cols[keep]), 1).astype(int)
    return (matches, np.setdiff1d(np.arange(n), matches[:, 0]), np.setdiff1d(np.arange(m), matches[:, 1]))
