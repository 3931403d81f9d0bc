"""Box operations, the one home for them: format conversions, clipping and rescaling, IoUs, NMS.

Box formats: ``xyxy`` = (x1, y1, x2, y2) corners, ``xywh`` = (cx, cy, w, h) centre form, ``ltwh`` = (left, top,
w, h) as COCO json; ``n`` suffix = normalised to [0, 1] by the image width/height. Functions accept torch
tensors or numpy arrays and return the same kind.
"""
from __future__ import annotations

import math
import time
from typing import Sequence, Union

import numpy as np
import torch
import torchvision

from utils.log import LOGGER

Array = Union[torch.Tensor, np.ndarray]


# --------------------------------------------------------------------------- box conversions
def _clone(x: Array) -> Array:
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy2xywh(x: Array) -> Array:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    y = _clone(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywh2xyxy(x: Array) -> Array:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    y = _clone(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xywhn2xyxy(x: Array, w: float = 640, h: float = 640, padw: float = 0, padh: float = 0) -> Array:
    """Normalised (cx, cy, w, h) -> pixel (x1, y1, x2, y2), with an optional offset."""
    y = _clone(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x: Array, w: float = 640, h: float = 640, clip: bool = False) -> Array:
    """Pixel (x1, y1, x2, y2) -> normalised (cx, cy, w, h)."""
    if clip:
        x = clip_coords(_clone(x), (h, w))
    y = _clone(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def xyxy2ltwh(x: Array) -> Array:
    """(x1, y1, x2, y2) -> COCO (left, top, w, h)."""
    y = _clone(x)
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def clip_coords(boxes: Array, shape: Sequence[int]) -> Array:
    """Clip xyxy boxes in place to an image of shape (h, w); returns boxes."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_coords(img1_shape: Sequence[int], coords: Array, img0_shape: Sequence[int],
                 ratio_pad=None) -> Array:
    """Map xyxy boxes from a letterboxed image (img1_shape h, w) back to the original (img0_shape).

    ``ratio_pad`` = ((ratio_h, ratio_w), (pad_w, pad_h)) as returned by the dataset; when
    None it is recomputed as the letterbox would. The two ratios are applied per axis: the
    resized image is rounded to whole pixels, so they differ slightly, and one gain for both
    axes (YOLOv7) shifts boxes by up to a pixel, enough to change matches at IoU 0.95.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        (rh, rw), pad = (gain, gain), ((img1_shape[1] - img0_shape[1] * gain) / 2,
                                       (img1_shape[0] - img0_shape[0] * gain) / 2)
    else:
        (rh, rw), pad = ratio_pad[0], ratio_pad[1]
    coords[..., [0, 2]] = (coords[..., [0, 2]] - pad[0]) / rw
    coords[..., [1, 3]] = (coords[..., [1, 3]] - pad[1]) / rh
    clip_coords(coords, img0_shape)
    return coords


# --------------------------------------------------------------------------- IoU
def decode_level(p: torch.Tensor, anchor_wh: torch.Tensor, stride: Union[float, torch.Tensor]) -> torch.Tensor:
    """One detection level's raw logits (B, na, ny, nx, no) decoded as YOLOv7's head does, as (B, na*ny*nx, no):
    xy = (2 sigmoid - 0.5 + cell) * stride and wh = (2 sigmoid)^2 * anchor in pixels, scores sigmoided.

    ``anchor_wh``: the level's (na, 2) anchors in pixels (any shape with na * 2 elements); ``stride`` in pixels.
    """
    bs, na, ny, nx, no = p.shape
    yv, xv = torch.meshgrid(torch.arange(ny, device=p.device, dtype=p.dtype),
                            torch.arange(nx, device=p.device, dtype=p.dtype), indexing="ij")
    grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
    y = p.sigmoid()
    xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * stride
    s = y[..., 2:4] * 2
    wh = s * s * anchor_wh.to(p.dtype).view(1, na, 1, 1, 2)  # s * s, not s ** 2: LiteRT has no general pow
    return torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, no)


def box_iou(box1: torch.Tensor, box2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M)."""
    return torchvision.ops.box_iou(box1, box2)


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, x1y1x2y2: bool = True, GIoU: bool = False,
             DIoU: bool = False, CIoU: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise IoU (or GIoU/DIoU/CIoU) of box1 (..., 4) and box2 (..., 4), broadcasting.

    Returns a tensor of shape broadcast(box1, box2)[..., 0]. Used by the losses, where
    predicted and target boxes are paired one to one.
    """
    if x1y1x2y2:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1.unbind(-1)
        b2_x1, b2_y1, b2_x2, b2_y2 = box2.unbind(-1)
    else:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
        b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
        b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2

    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * \
            (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (GIoU or DIoU or CIoU):
        return iou
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)  # enclosing box width
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)  # enclosing box height
    if CIoU or DIoU:
        c2 = cw ** 2 + ch ** 2 + eps  # enclosing diagonal squared
        rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
        if DIoU:
            return iou - rho2 / c2
        v = (4 / math.pi ** 2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
        with torch.no_grad():
            alpha = v / (v - iou + (1 + eps))
        return iou - (rho2 / c2 + v * alpha)
    c_area = cw * ch + eps
    return iou - (c_area - union) / c_area


# --------------------------------------------------------------------------- NMS
def _label_rows(lb: torch.Tensor, nc: int, like: torch.Tensor) -> torch.Tensor:
    """Prediction rows for given labels (n, 5) [cls, cx, cy, w, h]: objectness and class score 1."""
    lb = lb.to(device=like.device, dtype=like.dtype)
    v = torch.zeros((len(lb), nc + 5), device=like.device, dtype=like.dtype)
    v[:, :4] = lb[:, 1:5]
    v[:, 4] = 1.0
    v[torch.arange(len(lb), device=like.device), lb[:, 0].long() + 5] = 1.0
    return v


def _candidates(x: torch.Tensor, nc: int, conf_thres: float, multi_label: bool,
                cls_filter: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row index, class, score) of every candidate above ``conf_thres`` (score = obj * cls, or obj if nc == 1)."""
    scores = x[:, 4:5] if nc == 1 else x[:, 5:] * x[:, 4:5]
    if multi_label:
        i, j = (scores > conf_thres).nonzero(as_tuple=True)
        conf = scores[i, j]
    else:
        conf, j = scores.max(1)
        i = (conf > conf_thres).nonzero(as_tuple=True)[0]
        conf, j = conf[i], j[i]
    if cls_filter is not None:
        keep = (j[:, None] == cls_filter[None]).any(1)
        i, j, conf = i[keep], j[keep], conf[keep]
    return i, j, conf


def _nms_top(boxes: torch.Tensor, conf: torch.Tensor, idx: torch.Tensor, iou_thres: float, max_det: int,
             max_nms: int) -> torch.Tensor | None:
    """Indices (into ``conf``) of the boxes per-class NMS keeps, best first, at most ``max_det``; None if none.

    Greedy NMS keeps a box iff no higher-scoring kept box overlaps it, so the kept set among the
    k best candidates does not depend on the rest: NMS runs on a growing prefix until it yields
    ``max_det`` boxes (exactly the full result, far cheaper when an untrained model floods NMS
    with candidates). At most ``max_nms`` candidates (highest scores) are considered.
    """
    n = min(conf.shape[0], max_nms)
    if not n:
        return None
    k = min(n, max(3 * max_det, 1000))  # 1000 boxes: torchvision still uses its one-call path
    while True:
        top = conf.topk(k).indices if k < conf.shape[0] else conf.argsort(descending=True)
        keep = torchvision.ops.batched_nms(boxes[top].float(), conf[top].float(), idx[top], iou_thres)
        if keep.shape[0] >= max_det or k >= n:
            return top[keep[:max_det]]
        k = min(4 * k, n)


def non_max_suppression(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        classes: Sequence[int] | None = None, agnostic: bool = False,
                        multi_label: bool = False, labels: Sequence[torch.Tensor] = (),
                        max_det: int = 300, max_nms: int = 30000,
                        time_limit: float | None = None) -> list[torch.Tensor]:
    """Confidence filtering + per-class NMS (torchvision ``batched_nms``) on decoded predictions.

    ``prediction``: (B, N, 5 + nc) = pixel (cx, cy, w, h), objectness, class scores, as the
    model returns in eval mode (or the first element of that tuple). Score = obj * cls
    (obj alone for one-class models, whose class score is not trained).
    ``multi_label`` keeps every class above ``conf_thres`` per box (used for mAP);
    ``agnostic`` suppresses across classes; ``classes`` keeps only those class indices;
    ``labels`` (per image, (n, 5) [cls, cx, cy, w, h] pixels) are added as score-1.0
    boxes (autolabelling / --save-hybrid).
    At most ``max_nms`` candidates per image (highest scores) enter NMS so it stays fast,
    and at most ``max_det`` boxes per image are returned. Nothing is ever dropped for
    time: when ``time_limit`` (seconds, default 0.5 + 0.05 per image) is exceeded a
    warning is logged and NMS carries on.

    Returns a list over images of (n, 6) tensors [x1, y1, x2, y2, conf, cls], sorted by
    decreasing conf.
    """
    if isinstance(prediction, (list, tuple)):  # eval-mode model output (decoded, raw)
        prediction = prediction[0]
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"non_max_suppression: conf_thres={conf_thres} must be in [0, 1]")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"non_max_suppression: iou_thres={iou_thres} must be in [0, 1]")
    if prediction.dim() != 3 or prediction.shape[2] < 6:
        raise ValueError(f"non_max_suppression: expected (B, N, 5 + nc) predictions, "
                         f"got shape {tuple(prediction.shape)}")
    bs, nc = prediction.shape[0], prediction.shape[2] - 5
    multi_label &= nc > 1
    if time_limit is None:
        time_limit = 0.5 + 0.05 * bs
    t0 = time.time()
    device = prediction.device
    cls_filter = torch.tensor(list(classes), device=device) if classes is not None else None
    output = [torch.zeros((0, 6), device=device)] * bs

    for xi, x in enumerate(prediction):
        x = x[x[:, 4] > conf_thres]  # objectness pre-filter (score = obj * cls <= obj)
        if labels and len(labels[xi]):
            x = torch.cat((x, _label_rows(labels[xi], nc, x)), 0)
        if not x.shape[0]:
            continue
        box = xywh2xyxy(x[:, :4])
        i, j, conf = _candidates(x, nc, conf_thres, multi_label, cls_filter)
        sel = _nms_top(box[i], conf, torch.zeros_like(j) if agnostic else j, iou_thres, max_det, max_nms)
        if sel is not None:
            output[xi] = torch.cat((box[i[sel]], conf[sel, None], j[sel, None].to(box.dtype)), 1)

    elapsed = time.time() - t0
    if elapsed > time_limit:
        LOGGER.warning(f"WARNING: NMS took {elapsed:.3f}s for {bs} images (time limit {time_limit:.3f}s "
                       f"exceeded; no detections were dropped)")
    return output
