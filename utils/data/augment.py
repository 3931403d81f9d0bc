"""Image augmentations for detection, keeping boxes consistent with pixels (YOLOv7 semantics).

Images are HWC uint8 BGR numpy arrays (OpenCV); labels are float (n, 5) arrays
``[class, x1, y1, x2, y2]`` in pixels unless stated otherwise. Random draws use Python's
``random`` and NumPy's global RNG, which the dataloader seeds per worker.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence

import cv2
import numpy as np

from utils.hyp import KNOWN_KEYS, LOADER_KEYS, SEGMENT_ONLY_KEYS, check_value
from utils.log import LOGGER


def check_hyp(hyp: dict | None, prefix: str = "") -> dict:
    """Validate the loader's hyp keys by the rules of :data:`utils.hyp.SPECS`; return a dict with every loader
    key set.

    Missing loader keys are set to their "off" value with a warning; unknown keys are warned about (every key
    of :data:`utils.hyp.KNOWN_KEYS` is known); segment-only keys (``copy_paste``, ``paste_in``) are set to 0
    with box labels (an info line); a bad value raises :class:`utils.hyp.HypError` naming the key.
    """
    hyp = dict(hyp or {})
    out = {}
    missing = [k for k in LOADER_KEYS if k not in hyp]
    if missing:
        LOGGER.warning(f"{prefix}WARNING: hyp has no {', '.join(missing)}: that augmentation is off")
    unknown = [k for k in hyp if k not in KNOWN_KEYS]
    if unknown:
        LOGGER.warning(f"{prefix}WARNING: unknown hyp keys ignored: {', '.join(unknown)}")
    for k, off in LOADER_KEYS.items():
        v = float(check_value(k, hyp.get(k, off), f"{prefix}hyp"))
        if k in SEGMENT_ONLY_KEYS and v > 0:  # as in YOLOv7, these act on segments only: no-ops on boxes
            LOGGER.info(f"{prefix}hyp '{k}: {v}' needs segment labels and has no effect on box labels")
            v = 0.0
        out[k] = v
    if out["perspective"] > 0.001:
        LOGGER.warning(f"{prefix}WARNING: hyp 'perspective: {out['perspective']}' is above YOLOv7's "
                       f"useful range 0-0.001")
    for k in hyp:
        if k not in out:
            out[k] = hyp[k]
    return out


def letterbox(img: np.ndarray, new_shape: int | Sequence[int] = 640, color=(114, 114, 114), auto: bool = True,
              scaleFill: bool = False, scaleup: bool = True, stride: int = 32):
    """Resize keeping the aspect ratio, then pad to ``new_shape`` (h, w).

    ``auto`` pads only to the next multiple of ``stride`` (minimum rectangle); ``scaleFill``
    stretches to ``new_shape`` without padding; ``scaleup=False`` only shrinks.
    Returns ``(img, (ratio_w, ratio_h), (pad_w, pad_h))`` with the padding per side.
    """
    shape = img.shape[:2]  # h, w
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    ratio = r, r
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))  # w, h
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scaleFill:
        dw, dh = 0.0, 0.0
        new_unpad = (new_shape[1], new_shape[0])
        ratio = new_shape[1] / shape[1], new_shape[0] / shape[0]
    dw /= 2
    dh /= 2
    if shape[::-1] != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, ratio, (float(dw), float(dh))


def augment_hsv(img: np.ndarray, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5) -> None:
    """Random hue/saturation/value gains, in place on a BGR uint8 image (lookup tables)."""
    if not (hgain or sgain or vgain):
        return
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=img)


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 20,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Keep boxes (4, n) that stay > wh_thr px, keep > area_thr of their area and aspect < ar_thr.

    ``box1`` are the boxes before augmentation (scaled), ``box2`` after.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def clipped_polygon_box(poly: np.ndarray, width: float, height: float) -> np.ndarray:
    """xyxy bounding box of a convex polygon (k, 2) clipped to [0, width] x [0, height].

    Sutherland-Hodgman against the four image edges; an empty result gives a zero box.
    """
    pts = [tuple(p) for p in poly]
    for axis, limit, keep_below in ((0, 0.0, False), (0, width, True), (1, 0.0, False), (1, height, True)):
        if not pts:
            break
        out = []
        for k, cur in enumerate(pts):
            prev = pts[k - 1]
            if _inside(cur, axis, limit, keep_below):
                if not _inside(prev, axis, limit, keep_below):
                    out.append(_cross(prev, cur, axis, limit))
                out.append(cur)
            elif _inside(prev, axis, limit, keep_below):
                out.append(_cross(prev, cur, axis, limit))
        pts = out
    if not pts:
        return np.zeros(4)
    a = np.array(pts)
    return np.array([a[:, 0].min(), a[:, 1].min(), a[:, 0].max(), a[:, 1].max()])


def _inside(p, axis: int, limit: float, keep_below: bool) -> bool:
    """Whether point p is on the kept side of the line coordinate[axis] == limit."""
    return p[axis] <= limit if keep_below else p[axis] >= limit


def _cross(p, q, axis: int, limit: float) -> tuple[float, float]:
    """Point where segment p-q crosses the line coordinate[axis] == limit."""
    t = (limit - p[axis]) / (q[axis] - p[axis])
    return (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]))


def random_perspective(img: np.ndarray, targets: Optional[np.ndarray] = None, degrees: float = 10,
                       translate: float = 0.1, scale: float = 0.1, shear: float = 10, perspective: float = 0.0,
                       border: Sequence[int] = (0, 0)):
    """Random rotation/scale/shear/translation/perspective of an image and its xyxy pixel boxes.

    ``border`` (negative for mosaic: -s/2 per side) shrinks the output canvas. Boxes are the
    bounding boxes of the warped corners, clipped to the image, and dropped when they lose
    most of their area (``box_candidates``).
    """
    height = img.shape[0] + border[0] * 2
    width = img.shape[1] + border[1] * 2

    C = np.eye(3)  # move the image centre to the origin
    C[0, 2] = -img.shape[1] / 2
    C[1, 2] = -img.shape[0] / 2
    P = np.eye(3)  # perspective
    P[2, 0] = random.uniform(-perspective, perspective)
    P[2, 1] = random.uniform(-perspective, perspective)
    R = np.eye(3)  # rotation and scale
    a = random.uniform(-degrees, degrees)
    s = random.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)  # shear (degrees)
    S[0, 1] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)  # translation
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * width
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * height
    M = T @ S @ R @ P @ C  # right to left: C first
    if (border[0] != 0) or (border[1] != 0) or (M != np.eye(3)).any():
        if perspective:
            img = cv2.warpPerspective(img, M, dsize=(width, height), borderValue=(114, 114, 114))
        else:
            img = cv2.warpAffine(img, M[:2], dsize=(width, height), borderValue=(114, 114, 114))

    targets = np.zeros((0, 5)) if targets is None else targets
    n = len(targets)
    if n:
        xy = np.ones((n * 4, 3))
        xy[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
        xy = xy @ M.T
        xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.concatenate((x.min(1), y.min(1), x.max(1), y.max(1))).reshape(4, n).T
        if degrees or shear or perspective:  # box corners no longer axis-aligned
            # a tilted box cut by the image edge: bound the visible part, not the clipped corners
            out = (new[:, 0] < 0) | (new[:, 1] < 0) | (new[:, 2] > width) | (new[:, 3] > height)
            for i in np.flatnonzero(out):
                quad = np.stack((x[i, [0, 3, 1, 2]], y[i, [0, 3, 1, 2]]), 1)  # x1y1, x2y1, x2y2, x1y2
                new[i] = clipped_polygon_box(quad, width, height)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
        keep = box_candidates(box1=targets[:, 1:5].T * s, box2=new.T)
        targets = targets[keep]
        targets[:, 1:5] = new[keep]
    return img, targets


def mixup(img: np.ndarray, labels: np.ndarray, img2: np.ndarray, labels2: np.ndarray):
    """Blend two same-size images with a Beta(8, 8) ratio and keep both label sets."""
    r = np.random.beta(8.0, 8.0)
    img = cv2.addWeighted(img, r, img2, 1 - r, 0.0)  # uint8 blend: no float copy of either image
    return img, np.concatenate((labels, labels2), 0)


def flip_labels(labels: np.ndarray, img: np.ndarray, hyp: dict):
    """Random up-down / left-right flips of an image and its normalised xywh labels (n, 5)."""
    if hyp.get("flipud", 0) and random.random() < hyp["flipud"]:
        img = np.flipud(img)
        if len(labels):
            labels[:, 2] = 1 - labels[:, 2]
    if hyp.get("fliplr", 0) and random.random() < hyp["fliplr"]:
        img = np.fliplr(img)
        if len(labels):
            labels[:, 1] = 1 - labels[:, 1]
    return img, labels


__all__ = ["check_hyp", "letterbox", "augment_hsv", "random_perspective", "box_candidates", "mixup",
           "flip_labels", "clipped_polygon_box"]
