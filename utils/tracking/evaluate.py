"""CLEAR-MOT and identity scores of a tracker's output against ground truth (``motmetrics``).

``mot_scores(gt, hyp)`` takes rows ``frame, id, x1, y1, x2, y2, ...`` for both and matches boxes
per frame at IoU >= 0.5 (MOTChallenge's rule). MOTA = 1 - (misses + false positives + ID switches)
/ ground-truth boxes; IDF1 = the F1 score of boxes carrying the ground-truth identity they are
assigned to over the whole sequence (Ristani et al., 2016).
"""
from __future__ import annotations

import numpy as np

MIN_IOU = 0.5
METRICS = ("mota", "idf1", "num_switches", "num_misses", "num_false_positives", "num_objects",
           "num_unique_objects", "mostly_tracked")


def _distances(g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """1 - IoU of ground truth ``g`` and hypothesis ``h`` boxes, NaN (no match) below ``MIN_IOU``.

    torchvision's IoU, not motmetrics' own (which calls ``np.asfarray``, gone in NumPy 2) nor the
    trackers' (so the score does not rest on the code it scores).
    """
    import torch
    from torchvision.ops import box_iou

    iou = box_iou(torch.from_numpy(g[:, 2:6]), torch.from_numpy(h[:, 2:6])).numpy()
    return np.where(iou >= MIN_IOU, 1.0 - iou, np.nan)


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a if a.ndim == 2 else a.reshape(-1, 6)


def mot_scores(gt: np.ndarray, hyp: np.ndarray) -> dict[str, float]:
    """MOTA, IDF1, ID switches, misses, false positives, GT boxes/objects, mostly-tracked objects."""
    import motmetrics as mm

    gt, hyp = _rows(gt), _rows(hyp)
    acc = mm.MOTAccumulator(auto_id=False)
    frames = np.union1d(gt[:, 0], hyp[:, 0]).astype(int)
    for f in frames:
        g, h = gt[gt[:, 0] == f], hyp[hyp[:, 0] == f]
        dist = _distances(g, h)
        acc.update(g[:, 1].astype(int).tolist(), h[:, 1].astype(int).tolist(), dist, frameid=int(f))
    summary = mm.metrics.create().compute(acc, metrics=list(METRICS), name="seq")
    return {k: float(summary[k].iloc[0]) for k in METRICS}


def xyxy_rows(frame_rows: list[np.ndarray]) -> np.ndarray:
    """(n, 6) ``frame, id, x1, y1, x2, y2`` from per-frame (m, 7) tracker outputs (frames from 1)."""
    out = [np.column_stack((np.full(len(r), f), r[:, 6], r[:, :4])) for f, r in enumerate(frame_rows, 1) if len(r)]
    return np.concatenate(out) if out else np.zeros((0, 6))
