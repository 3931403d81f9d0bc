"""AutoAnchor: check how well the model's anchors fit a dataset and re-fit them when they do not.

Fit metric (YOLOv5/YOLOv7): for a label of size (w, h) and an anchor (aw, ah), the ratio
``x = min(w / aw, aw / w, h / ah, ah / h)``; the anchor can serve the label when
``x > 1 / thr`` (``thr`` = ``hyp['anchor_t']``). Best possible recall (BPR) is the share of
labels served by at least one anchor; "anchors above threshold" is the mean number of
anchors serving a label. When BPR < 0.98 new anchors come from k-means on the label sizes
refined by a genetic mutation search, and are written into the Detect layer's ``anchors``
(stride units) and ``anchor_grid`` (pixels) buffers, so they are saved with the checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from utils.anchors import PREFIX, check_anchor_order
from utils.data.config import check_dataset
from utils.data.dataset import LoadImagesAndLabels
from utils.log import LOGGER, colorstr


def _detect(model: nn.Module) -> nn.Module:
    m = model.module if hasattr(model, "module") and not hasattr(model, "model") else model
    return m.model[-1]


def _label_wh(dataset: Any, img_size: int, scale: np.ndarray | None = None) -> np.ndarray:
    """Label widths/heights (n, 2) in pixels once each image is resized to ``img_size`` (long side)."""
    shapes = np.asarray(dataset.shapes, dtype=np.float64)  # (N, 2) w, h
    if shapes.ndim != 2 or shapes.shape[1] != 2 or len(shapes) != len(dataset.labels):
        raise ValueError(f"{PREFIX}dataset.shapes must be (N, 2) (w, h) for the N images of "
                         f"dataset.labels, got {shapes.shape} for {len(dataset.labels)} label arrays")
    shapes = img_size * shapes / shapes.max(1, keepdims=True)
    if scale is not None:
        shapes = shapes * scale
    parts = [np.asarray(lb, dtype=np.float64)[:, 3:5] * s for s, lb in zip(shapes, dataset.labels) if len(lb)]
    return np.concatenate(parts, 0) if parts else np.zeros((0, 2))


def anchor_metrics(wh: torch.Tensor, anchors: torch.Tensor, thr: float = 4.0) -> tuple[float, float]:
    """(best possible recall, mean anchors above threshold) of label sizes ``wh`` (n, 2) vs ``anchors`` (k, 2)."""
    if len(wh) == 0:
        return 1.0, 0.0
    r = wh[:, None] / anchors[None]
    x = torch.min(r, 1 / r).min(2)[0]  # (n, k) worst side ratio
    best = x.max(1)[0]
    aat = (x > 1 / thr).float().sum(1).mean()
    bpr = (best > 1 / thr).float().mean()
    return float(bpr), float(aat)


def check_anchors(dataset: Any, model: nn.Module, thr: float = 4.0, imgsz: int = 640) -> bool:
    """Log the anchor fit on ``dataset``; re-fit the model's anchors when BPR < 0.98.

    ``dataset`` needs ``shapes`` (N, 2) image (w, h) and ``labels`` (list of (n, 5)
    [cls, cx, cy, w, h] normalised). Returns True when the anchors were replaced.
    """
    m = _detect(model)
    scale = np.random.uniform(0.9, 1.1, size=(len(dataset.shapes), 1))  # augment scale
    wh = torch.tensor(_label_wh(dataset, imgsz, scale), dtype=torch.float32)
    anchors = m.anchor_grid.detach().clone().cpu().view(-1, 2).float()
    bpr, aat = anchor_metrics(wh, anchors, thr)
    msg = f"{colorstr(PREFIX)}anchors/target = {aat:.2f}, Best Possible Recall (BPR) = {bpr:.4f}"
    if bpr >= 0.98:
        LOGGER.info(f"{msg}. Current anchors are a good fit to dataset")
        return False
    LOGGER.info(f"{msg}. Attempting to improve anchors, please wait...")
    na = m.anchor_grid.numel() // 2
    try:
        new = kmean_anchors(dataset, n=na, img_size=imgsz, thr=thr, gen=1000, verbose=False)
    except Exception as e:  # noqa: BLE001 - a failed re-fit must not stop training
        LOGGER.warning(f"{colorstr(PREFIX)}WARNING: anchor re-fit failed ({e}); keeping the original anchors")
        return False
    new = torch.tensor(new, dtype=torch.float32)
    new_bpr = anchor_metrics(wh, new, thr)[0]
    if new_bpr <= bpr:
        LOGGER.info(f"{colorstr(PREFIX)}Original anchors better than new anchors (BPR {new_bpr:.4f}), "
                    f"proceeding with original anchors")
        return False
    new = new.to(m.anchor_grid.device).type_as(m.anchor_grid)
    m.anchor_grid[:] = new.clone().view_as(m.anchor_grid)
    m.anchors[:] = new.clone().view_as(m.anchors) / m.stride.to(m.anchors.device).view(-1, 1, 1)
    check_anchor_order(m)
    LOGGER.info(f"{colorstr(PREFIX)}New anchors saved to model (BPR {bpr:.4f} -> {new_bpr:.4f}). "
                f"Update model *.yaml to use these anchors in the future.")
    return True


def kmean_anchors(dataset: Any, n: int = 9, img_size: int = 640, thr: float = 4.0, gen: int = 1000,
                  verbose: bool = True) -> np.ndarray:
    """Anchors (n, 2) in pixels, sorted by area, fitted to the dataset's label sizes.

    ``dataset``: an object with ``shapes`` and ``labels`` (``LoadImagesAndLabels``) or the
    path of a dataset yaml (its train split is read).

    k-means (scipy) on the size-normalised (w, h) of labels at least 2 px wide or high,
    then ``gen`` generations of random multiplicative mutation that keep a change when it
    raises the fitness = mean over labels of the best anchor ratio (counted only above 1/thr).
    """
    from scipy.cluster.vq import kmeans

    if isinstance(dataset, (str, Path)):  # a dataset yaml, as YOLOv7 allows: its train split
        data = check_dataset(dataset)
        dataset = LoadImagesAndLabels(data["train"], img_size, rect=True, nc=int(data["nc"]))
    inv_thr = 1 / thr
    wh0 = _label_wh(dataset, img_size)
    small = int((wh0 < 3.0).any(1).sum())
    if small:
        LOGGER.warning(f"{colorstr(PREFIX)}WARNING: extremely small objects found: {small} of "
                       f"{len(wh0)} labels are < 3 pixels in size")
    wh = wh0[(wh0 >= 2.0).any(1)]  # drop labels under 2 px
    if len(wh) < n:
        raise ValueError(f"{PREFIX}{len(wh)} labels of at least 2 px are too few to fit {n} anchors")

    wh_t = torch.tensor(wh, dtype=torch.float32)
    wh0_t = torch.tensor(wh0, dtype=torch.float32)

    def metric(k: np.ndarray, w: torch.Tensor):
        r = w[:, None] / torch.tensor(k, dtype=torch.float32)[None]
        x = torch.min(r, 1 / r).min(2)[0]
        return x, x.max(1)[0]

    def fitness(k: np.ndarray) -> float:
        _, best = metric(k, wh_t)
        return float((best * (best > inv_thr).float()).mean())

    def report(k: np.ndarray) -> np.ndarray:
        k = k[np.argsort(k.prod(1))]  # small to large
        x, best = metric(k, wh0_t)
        bpr = float((best > inv_thr).float().mean())
        aat = float((x > inv_thr).float().mean()) * n
        LOGGER.info(f"{colorstr(PREFIX)}thr={inv_thr:.2f}: {bpr:.4f} best possible recall, "
                    f"{aat:.2f} anchors past thr")
        if verbose:
            LOGGER.info(f"{colorstr(PREFIX)}n={n}, img_size={img_size}, fitness={fitness(k):.3f}, "
                        f"anchors: " + ", ".join(f"{round(a)},{round(b)}" for a, b in k))
        return k

    LOGGER.info(f"{colorstr(PREFIX)}Running kmeans for {n} anchors on {len(wh)} points...")
    s = wh.std(0)
    s[s == 0] = 1.0
    k, _ = kmeans(wh / s, n, iter=30)
    if len(k) != n:  # kmeans drops empty clusters (many identical sizes): pad with jittered copies
        extra = k[np.random.randint(len(k), size=n - len(k))] * np.random.uniform(0.9, 1.1, (n - len(k), 2))
        k = np.concatenate((k, extra), 0)
    k = k * s
    k = report(k)

    rng = np.random
    f, sh, mp, sigma = fitness(k), k.shape, 0.9, 0.1  # fitness, shape, mutation prob, sigma
    for _ in range(gen):
        v = np.ones(sh)
        while (v == 1).all():  # mutate until something changes
            v = ((rng.random(sh) < mp) * rng.random() * rng.randn(*sh) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg.copy()
    LOGGER.info(f"{colorstr(PREFIX)}Evolved anchors: fitness {f:.4f}")
    return report(k)
