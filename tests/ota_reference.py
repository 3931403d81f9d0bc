"""A per-image OTA assignment loop (YOLOv7's way), the one reference for ``ComputeLossOTA.build_targets``.

tests/test_loss.py checks the batched assignment against it, with candidates made by an
independent Python loop; benchmarks/train_speed.py times it against the batched version,
with candidates from ``find_positives`` (as YOLOv7 computes them for the whole batch).
Rules: unique candidates per image; class cost BCE of ``sqrt(sigmoid(cls) * sigmoid(obj))``
against the one-hot class, plus 3 * -log IoU; dynamic k = sum of the top-10 IoUs (at least 1);
a prediction claimed by several ground truths goes to the image's lowest-cost ground truth,
claimant or not (ties: first row).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from utils.boxes import box_iou, xywh2xyxy


def _image_candidates(p, candidates, bi, anchors, strides):
    """Unique candidates of image ``bi``: keys (level, image, anchor, gj, gi), xyxy boxes, cls and obj logits."""
    keys, boxes, cls, obj = [], [], [], []
    for i, lv in enumerate(candidates):
        b, a, gj, gi = lv[:4]
        m = b == bi
        u = torch.unique(torch.stack((a[m], gj[m], gi[m]), 1), dim=0)
        if not len(u):
            continue
        fg = p[i][bi, u[:, 0], u[:, 1], u[:, 2]].float()
        grid = torch.stack((u[:, 2], u[:, 1]), 1).float()
        pxy = (fg[:, :2].sigmoid() * 2 - 0.5 + grid) * strides[i]
        pwh = (fg[:, 2:4].sigmoid() * 2) ** 2 * anchors[i][u[:, 0]] * strides[i]
        boxes.append(xywh2xyxy(torch.cat((pxy, pwh), 1)))
        cls.append(fg[:, 5:])
        obj.append(fg[:, 4:5])
        keys += [(i, bi, *map(int, k)) for k in u]
    if not keys:
        return keys, None, None, None
    return keys, torch.cat(boxes), torch.cat(cls), torch.cat(obj)


@torch.no_grad()
def per_image_ota(p: Sequence[torch.Tensor], targets: torch.Tensor, candidates: Sequence[Sequence[torch.Tensor]],
                  anchors: torch.Tensor, strides: Sequence[float], img_hw: tuple[int, int], nc: int,
                  stats: Optional[dict] = None) -> set:
    """OTA positives as a set of (level, image, anchor, gj, gi, target row), one image at a time.

    ``candidates``: per level ``(b, a, gj, gi, ...)`` index tensors (duplicates allowed).
    ``stats`` (dict, optional) counts ``contested`` predictions and ``outsider`` wins (won by a
    ground truth that had not claimed them).
    """
    stats = {"contested": 0, "outsider": 0} if stats is None else stats
    strides = [float(s) for s in strides]
    anchors = anchors.float()
    h, w = img_hw
    gain = torch.tensor([w, h, w, h], dtype=torch.float32)
    out = set()
    for bi in range(p[0].shape[0]):
        rows = (targets[:, 0] == bi).nonzero()[:, 0]
        if not len(rows):
            continue
        keys, boxes, cls, obj = _image_candidates(p, candidates, bi, anchors, strides)
        if not keys:
            continue
        t = targets[rows]
        iou = box_iou(xywh2xyxy(t[:, 2:6].float() * gain), boxes)
        g, c = len(rows), len(keys)
        onehot = F.one_hot(t[:, 1].long(), nc).float().unsqueeze(1).repeat(1, c, 1)
        y = (cls.sigmoid().unsqueeze(0).repeat(g, 1, 1) * obj.sigmoid().unsqueeze(0).repeat(g, 1, 1)).sqrt()
        cls_cost = F.binary_cross_entropy_with_logits(torch.log(y / (1 - y)), onehot, reduction="none").sum(-1)
        cost = cls_cost + 3.0 * -torch.log(iou + 1e-8)
        ks = torch.clamp(iou.topk(min(10, c), 1).values.sum(1).int(), min=1)
        match = torch.zeros_like(cost)
        for r in range(g):
            match[r, torch.topk(cost[r], int(ks[r]), largest=False).indices] = 1.0
        multi = match.sum(0) > 1
        if multi.any():
            claimed = match[:, multi].clone()
            winner = cost[:, multi].argmin(0)  # first row among equal costs
            match[:, multi] = 0.0
            match[winner, multi] = 1.0
            stats["contested"] += int(multi.sum())
            stats["outsider"] += int((claimed[winner, torch.arange(len(winner))] == 0).sum())
        for r, col in match.nonzero().tolist():
            out.add((*keys[col], int(rows[r])))
    return out
