"""The graphs export.py traces: a fused model wrapped to give the outputs a runtime needs.

:class:`DecodedHead` (decoded predictions, either head convention), :class:`RawHead` (per-level raw outputs,
``--no-grid``), :class:`HeadMaps` (the head convs' 4-D maps, NCNN), :class:`BoxesScores` and the end-to-end
graphs with NMS inside (:class:`End2End` with TensorRT-style outputs, :class:`End2EndORT` with YOLOv7's ONNX
Runtime (N, 7) rows).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from models.yolo import layer_input
from utils.boxes import xywh2xyxy

MAX_WH = 4096  # class offset of class-aware NMS in the end2end graph (pixels), as YOLOv7



# --------------------------------------------------------------------------- model wrappers
def detect_head(model: nn.Module) -> nn.Module:
    """The Detect / IDetect module (last layer of ``Model.model``)."""
    return model.model[-1]



@torch.no_grad()
def decoded(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    """Decoded predictions (B, N, 5 + nc) of an eval-mode model (either output convention)."""
    y = model(img)
    return y[0] if isinstance(y, (list, tuple)) else y



class RawHead(nn.Module):
    """Returns the raw per-level head outputs (B, na, ny, nx, no) of an eval-mode model.

    YOLOv7 exports these when ``--grid`` is off: the Detect layer runs its training branch (no
    sigmoid, no grid), every other layer stays in eval mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        head = detect_head(self.model)
        was = head.training
        head.training = True
        try:
            return tuple(self.model(x))
        finally:
            head.training = was



class HeadMaps(nn.Module):
    """The head convs' outputs (B, na * no, ny, nx) per level: 4-D maps, no reshape or decode.

    The NCNN export (ncnn blobs are at most 4-D; batch 1) ends here; the runtime decodes with
    the anchors and strides stored beside it, exactly as the Detect head does.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        layers, head, y = self.model.model, detect_head(self.model), []
        for m in layers[:-1]:  # Model's forward, stopping before the Detect layer
            x = m(layer_input(m, x, y))
            y.append(x if m.i in self.model.save else None)
        xs = [x if j == -1 else y[j] for j in head.f]
        return tuple(head._head(i, xi) for i, xi in enumerate(xs))



class DecodedHead(nn.Module):
    """Returns only the decoded predictions (B, N, 5 + nc), whatever the Detect convention."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y[0] if isinstance(y, (list, tuple)) else y



class BoxesScores(nn.Module):
    """YOLOv7's ``include_nms`` outputs: boxes (B, N, 4) pixel xyxy, scores (B, N, nc) = obj * cls."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = DecodedHead(model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.model(x)
        return xywh2xyxy(p[..., :4]), p[..., 5:] * p[..., 4:5]



class ORTNonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (opset >= 11) with a real PyTorch forward (torchvision NMS).

    Inputs follow the ONNX op: ``boxes`` (B, N, 4) xyxy, ``scores`` (B, C, N), 1-element tensors
    ``max_output_boxes_per_class`` (int64), ``iou_threshold`` and ``score_threshold`` (float32).
    Returns selected indices (K, 3) int64 rows ``[batch, class, box]``. Scores must be strictly
    greater than the threshold to be kept, as in ONNX Runtime.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
        max_out = int(max_output_boxes_per_class.reshape(-1)[0])
        iou, thr = float(iou_threshold.reshape(-1)[0]), float(score_threshold.reshape(-1)[0])
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                s = scores[b, c]
                cand = torch.nonzero(s > thr).flatten()
                keep = cand[torchvision.ops.nms(boxes[b, cand].float(), s[cand].float(), iou)[:max_out]]
                rows.append(torch.stack((torch.full_like(keep, b), torch.full_like(keep, c), keep), 1))
        if not rows:
            return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
        return torch.cat(rows, 0)

    @staticmethod
    def symbolic(g, boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
        return g.op("NonMaxSuppression", boxes, scores, max_output_boxes_per_class, iou_threshold,
                    score_threshold, center_point_box_i=0)



class _NMSGraph(nn.Module):
    """Shared part of the end2end graphs: decoded boxes, best class and score, NMS selection."""

    def __init__(self, model: nn.Module, topk_all: int, iou_thres: float, conf_thres: float,
                 agnostic: bool, max_wh: int):
        super().__init__()
        self.model = DecodedHead(model)
        self.topk_all = int(topk_all)
        self.agnostic = agnostic
        self.max_wh = int(max_wh)
        self.register_buffer("max_out", torch.tensor([int(topk_all)], dtype=torch.int64), persistent=False)
        self.register_buffer("iou_thres", torch.tensor([float(iou_thres)]), persistent=False)
        self.register_buffer("conf_thres", torch.tensor([float(conf_thres)]), persistent=False)

    def select(self, x: torch.Tensor):
        """(p, boxes xyxy, score (B, N, 1), cls (B, N, 1), selected (K, 3) [batch, class, box])."""
        p = self.model(x).float()  # (B, N, 5 + nc)
        boxes = xywh2xyxy(p[..., :4])
        obj = p[..., 4:5]
        scores = obj if p.shape[2] == 6 else p[..., 5:] * obj
        score, cls = scores.max(2, keepdim=True)  # (B, N, 1)
        nms_boxes = boxes if self.agnostic else boxes + cls.to(boxes.dtype) * self.max_wh
        sel = ORTNonMaxSuppression.apply(nms_boxes, score.transpose(1, 2), self.max_out,
                                         self.iou_thres, self.conf_thres)
        return p, boxes, score, cls, sel



class End2End(_NMSGraph):
    """Model + NMS in one graph: returns (num_dets, det_boxes, det_scores, det_classes).

    Same selection as ``utils.general.non_max_suppression(pred, conf_thres, iou_thres,
    max_det=topk_all)``: score = obj * cls (obj for nc == 1), best class per box, class-aware NMS
    through a per-class coordinate offset of ``MAX_WH`` pixels (``agnostic`` drops it).
    """

    def __init__(self, model: nn.Module, topk_all: int = 100, iou_thres: float = 0.45,
                 conf_thres: float = 0.25, agnostic: bool = False):
        super().__init__(model, topk_all, iou_thres, conf_thres, agnostic, MAX_WH)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p, boxes, score, cls, sel = self.select(x)
        keep = torch.zeros_like(score[..., 0])  # (B, N): 1 where NMS kept the box
        keep[sel[:, 0], sel[:, 2]] = 1.0
        k = min(self.topk_all, int(p.shape[1]))  # a constant in exported graphs
        masked = score[..., 0] * keep + (keep - 1.0)  # kept scores, -1 elsewhere
        vals, idx = masked.topk(k, dim=1)
        valid = keep.gather(1, idx)  # (B, k)
        num_dets = valid.sum(1, keepdim=True).to(torch.int32)
        det_boxes = boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1)
        det_scores = vals * valid
        det_classes = (cls[..., 0].gather(1, idx).to(torch.int32) + 1) * valid.to(torch.int32) - 1
        return num_dets, det_boxes, det_scores, det_classes



class End2EndORT(_NMSGraph):
    """YOLOv7's ONNX Runtime end2end graph (``--end2end --max-wh N``): one (K, 7) output of rows
    [batch_id, x0, y0, x1, y1, cls, score], at most ``topk_all`` boxes per class and image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, boxes, score, cls, sel = self.select(x)
        b, i = sel[:, 0], sel[:, 2]
        return torch.cat((b.unsqueeze(1).float(), boxes[b, i, :], cls[b, i, :].float(), score[b, i, :]), 1)
