"""Detection metrics: COCO-faithful matching and AP, P/R at max F1, confusion matrix, fitness.

The evaluation follows pycocotools' ``COCOeval`` (bbox, area "all", maxDets 100) so that
our numbers equal the official evaluator's on the same detections:

- per image and class, only the 100 highest-scoring detections count (the rest are
  dropped, not counted as false positives);
- for every IoU threshold 0.50:0.05:0.95 independently, detections are taken in order of
  decreasing score and each one is matched to the still-unmatched label of its class with
  the highest IoU (>= threshold);
- per class, AP is the mean over 101 recall points of the interpolated precision envelope;
  classes without labels are left out of the mean.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from utils.boxes import box_iou
from utils.log import LOGGER
from utils.names import names_dict
from utils.plots import plot_confusion_matrix, plot_mc_curve, plot_pr_curve

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10, dtype=torch.float64)  # COCO's 0.50:0.05:0.95 (np.linspace)
REC_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # COCO's 101 recall points


def fitness(x: np.ndarray) -> np.ndarray:
    """Model fitness: weighted sum of [P, R, mAP@.5, mAP@.5:.95] = 0.1 mAP@.5 + 0.9 mAP@.5:.95."""
    w = np.array([0.0, 0.0, 0.1, 0.9])
    return (np.asarray(x, dtype=np.float64).reshape(-1, np.asarray(x).shape[-1])[:, :4] * w).sum(1)


# --------------------------------------------------------------------------- matching
def topk_per_class(cls: torch.Tensor, conf: torch.Tensor, k: int = 100) -> torch.Tensor:
    """Boolean mask of the detections that are among the ``k`` highest-scoring of their class.

    Ties are broken by input order, as COCOeval's stable sort does.
    """
    n = cls.shape[0]
    if n <= k:
        return torch.ones(n, dtype=torch.bool, device=cls.device)
    order = torch.argsort(-conf.double(), stable=True)
    order = order[torch.argsort(cls[order], stable=True)]  # grouped by class, by score within
    c = cls[order]
    first = torch.ones(n, dtype=torch.bool, device=cls.device)
    first[1:] = c[1:] != c[:-1]
    pos = torch.arange(n, device=cls.device)
    group_start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0).values
    keep = torch.zeros(n, dtype=torch.bool, device=cls.device)
    keep[order] = (pos - group_start) < k
    return keep


def match_detections(detections: torch.Tensor, labels: torch.Tensor,
                     iouv: torch.Tensor = IOU_THRESHOLDS, max_det: int = 100
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """COCOeval matching of one image's detections to its labels at every IoU threshold.

    Args:
        detections: (n, 6) [x1, y1, x2, y2, conf, cls].
        labels: (m, 5) [cls, x1, y1, x2, y2], same pixel space as the detections.
        iouv: IoU thresholds (T,).
        max_det: detections kept per class (COCO's maxDets=100).
    Returns:
        correct: (n, T) bool, True where the detection is a true positive at that threshold.
        keep: (n,) bool, False for detections beyond the top ``max_det`` of their class,
        which COCOeval ignores entirely (they must not be counted at all).

    Each threshold is matched independently. In score order, each detection takes the
    unmatched label of its class with the highest IoU >= threshold. The greedy pass is
    resolved in vectorised rounds: a detection's choice is final once it is the
    highest-scoring undecided detection that could still take its preferred label, which
    gives exactly the sequential result; most images need 1-3 rounds.
    """
    if detections.device.type == "mps":  # no float64 there: match on the CPU
        correct, keep = match_detections(detections.cpu(), labels.cpu(), iouv.cpu(), max_det)
        return correct.to(detections.device), keep.to(detections.device)
    n, m, nt = detections.shape[0], labels.shape[0], iouv.numel()
    device = detections.device
    correct = torch.zeros((n, nt), dtype=torch.bool, device=device)
    if n == 0:
        return correct, torch.ones(0, dtype=torch.bool, device=device)
    det_cls, conf = detections[:, 5], detections[:, 4]
    keep = topk_per_class(det_cls, conf, max_det)
    if m == 0:
        return correct, keep

    order = torch.nonzero(keep).flatten()
    order = order[torch.argsort(-conf[order].double(), stable=True)]  # COCO: mergesort by -score
    d = detections[order]
    iou = box_iou(d[:, :4].double(), labels[:, 1:].double())  # (D, M), float64 as COCO
    iou = iou * (d[:, 5:6] == labels[None, :, 0])  # other classes never match
    thr = torch.clamp(iouv.to(device=device, dtype=torch.float64), max=1 - 1e-10)
    cand = iou[None] >= thr[:, None, None]  # (T, D, M) a label this detection may take
    nd = d.shape[0]

    # COCO keeps the *last* label among equal IoUs; flip so argmax (first max) picks it.
    iou_rev = iou.flip(1)
    cand_rev = cand.flip(2)
    det_idx = torch.arange(nd, device=device)
    undecided = cand_rev.any(2)  # (T, D) detections with any candidate at all
    gt_free = torch.ones((nt, m), dtype=torch.bool, device=device)
    match = torch.full((nt, nd), -1, dtype=torch.long, device=device)
    while undecided.any():
        avail = cand_rev & gt_free.flip(1)[:, None, :] & undecided[:, :, None]  # (T, D, M) reversed
        has = avail.any(2)
        undecided &= has  # no free label left: an unmatched detection (false positive)
        score = torch.where(avail, iou_rev[None], torch.full_like(iou_rev[None], -1.0))
        pref = score.argmax(2)  # (T, D) reversed label index of the preferred label
        # highest-priority undecided detection that could take each label
        claimant = torch.where(avail, det_idx[None, :, None], torch.full_like(avail, nd, dtype=torch.long))
        first = claimant.min(1).values  # (T, M) reversed
        final = undecided & (first.gather(1, pref) == det_idx[None])
        t_i, d_i = final.nonzero(as_tuple=True)
        g_i = m - 1 - pref[t_i, d_i]
        match[t_i, d_i] = g_i
        gt_free[t_i, g_i] = False
        undecided &= ~final

    correct[order] = (match >= 0).T
    return correct, keep


# --------------------------------------------------------------------------- AP
def compute_ap(recall: np.ndarray, precision: np.ndarray, v5_metric: bool = False) -> float:
    """AP of one class at one IoU threshold from cumulative recall/precision in score order.

    Default: COCO's rule, the mean of the precision envelope sampled at 101 recall points
    (``searchsorted(..., side='left')``, 0 beyond the highest recall reached).
    ``v5_metric``: YOLOv5's rule (area under the np.interp'd envelope with a final
    (recall 1, precision 0) sentinel), for comparison with numbers reported by YOLOv5/v7.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if not recall.size:
        return 0.0
    if v5_metric:
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([1.0], precision, [0.0]))
        mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
        x = np.linspace(0, 1, 101)
        y = np.interp(x, mrec, mpre)
        return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())  # trapezoid rule
    env = np.flip(np.maximum.accumulate(np.flip(precision)))
    inds = np.searchsorted(recall, REC_THRESHOLDS, side="left")
    q = np.where(inds < len(env), env[np.minimum(inds, len(env) - 1)], 0.0)
    return float(q.mean())


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
                 plot: bool = False, save_dir: Union[str, Path] = ".", names: Union[Sequence[str], dict] = (),
                 v5_metric: bool = False):
    """Per-class AP at each IoU threshold, and P, R, F1 at the confidence of maximum mean F1.

    Args:
        tp: (n, T) bool true positives of all kept detections (see :func:`match_detections`).
        conf: (n,) scores; pred_cls: (n,) predicted classes; target_cls: (m,) label classes.
        plot: write PR_curve.png, F1_curve.png, P_curve.png, R_curve.png to ``save_dir``.
        names: class names (list or {index: name}).
        v5_metric: YOLOv5's AP rule instead of COCO's (see :func:`compute_ap`).
    Returns:
        p, r, ap, f1, unique_classes: p, r, f1 (nc,) at the max-F1 confidence; ap (nc, T);
        unique_classes (nc,) int32 = the classes that have labels (others are not scored,
        as in COCO).
    """
    tp = np.asarray(tp, dtype=bool)
    if tp.ndim == 1:
        tp = tp[:, None]
    conf = np.asarray(conf, dtype=np.float64).reshape(-1)
    pred_cls = np.asarray(pred_cls).reshape(-1)
    target_cls = np.asarray(target_cls).reshape(-1)
    i = np.argsort(-conf, kind="mergesort")
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]

    unique_classes = np.unique(target_cls)
    nc, nt = unique_classes.shape[0], tp.shape[1]
    px = np.linspace(0, 1, 1000)  # confidence axis of the P/R/F1 curves
    ap = np.zeros((nc, nt))
    p, r = np.zeros((nc, 1000)), np.zeros((nc, 1000))
    py = []  # precision envelope at IoU 0.5 sampled on the recall axis px, for the PR plot
    eps = np.spacing(1)
    for ci, c in enumerate(unique_classes):
        sel = pred_cls == c
        n_l = int((target_cls == c).sum())
        n_p = int(sel.sum())
        if n_p == 0 or n_l == 0:
            py.append(np.zeros(1000))
            continue
        tpc = tp[sel].cumsum(0)
        fpc = (~tp[sel]).cumsum(0)
        recall = tpc / n_l  # (n_p, T)
        precision = tpc / (tpc + fpc + eps)
        # curves vs confidence (conf decreasing -> use negatives for np.interp)
        r[ci] = np.interp(-px, -conf[sel], recall[:, 0], left=0)
        p[ci] = np.interp(-px, -conf[sel], precision[:, 0], left=1)
        for j in range(nt):
            ap[ci, j] = compute_ap(recall[:, j], precision[:, j], v5_metric)
        env = np.flip(np.maximum.accumulate(np.flip(precision[:, 0])))
        py.append(np.interp(px, recall[:, 0], env, right=0))

    f1 = 2 * p * r / (p + r + 1e-16)
    names = names_dict(names)
    if plot and nc:
        sub = {int(c): names.get(int(c), str(int(c))) for c in unique_classes}
        save_dir = Path(save_dir)
        plot_pr_curve(px, np.stack(py, 1), ap, save_dir / "PR_curve.png", sub)
        plot_mc_curve(px, f1, save_dir / "F1_curve.png", sub, ylabel="F1")
        plot_mc_curve(px, p, save_dir / "P_curve.png", sub, ylabel="Precision")
        plot_mc_curve(px, r, save_dir / "R_curve.png", sub, ylabel="Recall")

    i = int(f1.mean(0).argmax()) if nc else 0
    return p[:, i], r[:, i], ap, f1[:, i], unique_classes.astype("int32")


# --------------------------------------------------------------------------- confusion matrix
class ConfusionMatrix:
    """Detection confusion matrix, (nc + 1) x (nc + 1): rows = predicted class, columns = true class.

    Row ``nc`` (background) counts labels no detection found; column ``nc`` counts
    detections that match no label. Detections below ``conf`` are ignored; a detection and
    a label pair up when their IoU exceeds ``iou_thres`` (each at most once, best IoU first).
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc = nc
        self.conf = conf
        self.iou_thres = iou_thres

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one image: detections (n, 6) [x1, y1, x2, y2, conf, cls]; labels (m, 5) [cls, x1, y1, x2, y2]."""
        gt_classes = labels[:, 0].long().cpu().numpy() if len(labels) else np.zeros(0, int)
        if detections is None or not len(detections):
            np.add.at(self.matrix, (self.nc, gt_classes), 1)
            return
        detections = detections[detections[:, 4] > self.conf]
        det_classes = detections[:, 5].long().cpu().numpy()
        if not len(labels):
            np.add.at(self.matrix, (det_classes, self.nc), 1)
            return
        iou = box_iou(labels[:, 1:].float(), detections[:, :4].float()).cpu().numpy()  # (m, n)
        gi, di = np.nonzero(iou > self.iou_thres)
        if gi.size:
            o = np.argsort(-iou[gi, di], kind="mergesort")
            gi, di = gi[o], di[o]
            _, u = np.unique(di, return_index=True)  # each detection once (its best label)
            u = np.sort(u)
            gi, di = gi[u], di[u]
            _, u = np.unique(gi, return_index=True)  # each label once (its best detection)
            gi, di = gi[u], di[u]
        np.add.at(self.matrix, (det_classes[di], gt_classes[gi]), 1)
        missed = np.setdiff1d(np.arange(len(gt_classes)), gi)
        np.add.at(self.matrix, (self.nc, gt_classes[missed]), 1)
        extra = np.setdiff1d(np.arange(len(det_classes)), di)
        np.add.at(self.matrix, (det_classes[extra], self.nc), 1)

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """True positives and false positives per class (background excluded)."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]

    def plot(self, normalize: bool = True, save_dir: Union[str, Path] = "", names: Sequence[str] = ()) -> None:
        """Write confusion_matrix.png (column-normalised by default) to ``save_dir``."""
        try:
            plot_confusion_matrix(self.matrix, Path(save_dir) / "confusion_matrix.png", names, normalize)
        except Exception as e:  # a failed plot must never fail an evaluation
            LOGGER.warning(f"WARNING: ConfusionMatrix plot failure: {e}")

    def print(self) -> None:
        for row in self.matrix:
            LOGGER.info(" ".join(map(str, row)))
