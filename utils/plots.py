"""Plots: batch mosaics, label statistics, training results, PR/P/R/F1 curves, confusion matrix.

Figures are drawn on matplotlib's Agg canvas (``matplotlib.figure.Figure``, no pyplot), so no
window is ever opened and plotting works on headless machines and in worker threads. Boxes
on images are drawn with OpenCV by one function, :func:`plot_one_box` (detect.py uses it too).
Every file is written atomically (whole or absent), as all artifacts of the project.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np
import torch

from utils.atomic import atomic_write, write_bytes
from utils.boxes import xywh2xyxy, xyxy2xywh
from utils.log import LOGGER
from utils.names import names_dict

PathLike = Union[str, Path]


# --------------------------------------------------------------------------- colours
class Colors:
    """A fixed 20-colour palette; ``colors(i)`` is the RGB (or BGR) tuple of class ``i``, stable across runs."""

    HEX = ("E6194B", "3CB44B", "FFE119", "4363D8", "F58231", "911EB4", "42D4F4", "F032E6", "BFEF45",
           "FABED4", "469990", "DCBEFF", "9A6324", "FFFAC8", "800000", "AAFFC3", "808000", "FFD8B1",
           "000075", "A9A9A9")

    def __init__(self):
        self.palette = [tuple(int(h[i:i + 2], 16) for i in (0, 2, 4)) for h in self.HEX]
        self.n = len(self.palette)

    def __call__(self, i: int, bgr: bool = False) -> tuple[int, int, int]:
        c = self.palette[int(i) % self.n]
        return (c[2], c[1], c[0]) if bgr else c


colors = Colors()


def _figure(*args, **kwargs):
    """A matplotlib Figure on the Agg canvas (no pyplot state, no windows)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(*args, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: PathLike, dpi: int) -> Path:
    """Write a figure atomically (format from the suffix): the png is whole or absent."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    return path


def _write_image(path: PathLike, img: np.ndarray) -> Path:
    """Encode an HWC BGR image by the suffix of ``path`` and write it atomically."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".jpg", img)
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode an image as {path.suffix!r}")
    return write_bytes(path, buf.tobytes())


# --------------------------------------------------------------------------- drawing on images
def plot_one_box(x: Sequence[float], img: np.ndarray, color: Sequence[int] | None = None,
                 label: str | None = None, line_thickness: int | None = None) -> np.ndarray:
    """Draw one xyxy box (and an optional filled label) on ``img`` in place (HWC uint8, any channel order)."""
    tl = line_thickness or max(round(0.002 * (img.shape[0] + img.shape[1]) / 2) + 1, 1)
    color = tuple(int(c) for c in (color or colors(0)))
    c1, c2 = (int(x[0]), int(x[1])), (int(x[2]), int(x[3]))
    cv2.rectangle(img, c1, c2, color, thickness=tl, lineType=cv2.LINE_AA)
    if label:
        tf = max(tl - 1, 1)
        fs = tl / 3
        w, h = cv2.getTextSize(label, 0, fontScale=fs, thickness=tf)[0]
        outside = c1[1] - h - 3 >= 0  # label above the box if it fits, else inside
        c2 = (c1[0] + w, c1[1] - h - 3 if outside else c1[1] + h + 3)
        cv2.rectangle(img, c1, c2, color, -1, cv2.LINE_AA)
        txt = (255, 255, 255) if sum(color) < 382 else (0, 0, 0)
        cv2.putText(img, label, (c1[0], c1[1] - 2 if outside else c1[1] + h + 2), 0, fs, txt,
                    thickness=tf, lineType=cv2.LINE_AA)
    return img


def output_to_target(output: Sequence[torch.Tensor]) -> np.ndarray:
    """NMS output (list of (n, 6) [x1, y1, x2, y2, conf, cls]) -> (N, 7) [img, cls, cx, cy, w, h, conf] pixels."""
    rows = []
    for i, o in enumerate(output):
        if o is None or not len(o):
            continue
        o = o.detach().float().cpu()
        xywh = xyxy2xywh(o[:, :4])
        rows.append(torch.cat((torch.full((len(o), 1), float(i)), o[:, 5:6], xywh, o[:, 4:5]), 1))
    return torch.cat(rows, 0).numpy() if rows else np.zeros((0, 7), dtype=np.float32)


def plot_images(images, targets, paths: Sequence[str] | None = None, fname: PathLike = "images.jpg",
                names=None, max_size: int = 640, max_subplots: int = 16, conf_thres: float = 0.25) -> np.ndarray:
    """Mosaic of a batch with its boxes, written to ``fname`` (train_batch*.jpg, val_batch*_labels/_pred.jpg).

    ``images``: (B, 3, H, W) RGB, uint8 or float in [0, 1]. ``targets``: (N, 6)
    [img, cls, cx, cy, w, h] labels, or (N, 7) with a confidence (predictions, drawn when
    conf > ``conf_thres``); boxes normalised to [0, 1] or in pixels of the network input.
    Returns the mosaic (HWC, BGR).
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().float().numpy()
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().float().numpy()
    images = np.asarray(images, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.float32)
    if targets.ndim != 2:
        targets = targets.reshape(-1, 6)
    if images.size and images.max() <= 1.0:
        images = images * 255.0
    names = names_dict(names)
    bs, _, h, w = images.shape
    bs = min(bs, max_subplots)
    ns = int(math.ceil(bs ** 0.5))  # grid side
    scale = min(1.0, max_size / max(h, w))  # each tile at most max_size
    hs, ws = max(int(h * scale), 1), max(int(w * scale), 1)
    mosaic = np.full((ns * hs, ns * ws, 3), 255, dtype=np.uint8)
    tl = max(round(0.002 * (hs + ws) / 2) + 1, 1)
    for i in range(bs):
        x0, y0 = ws * (i % ns), hs * (i // ns)
        im = images[i].transpose(1, 2, 0).clip(0, 255).astype(np.uint8)[..., ::-1]  # RGB -> BGR
        if scale != 1:
            im = cv2.resize(im, (ws, hs), interpolation=cv2.INTER_AREA)
        mosaic[y0:y0 + hs, x0:x0 + ws] = im
        t = targets[targets[:, 0] == i]
        if len(t):
            is_pred = t.shape[1] == 7
            boxes = xywh2xyxy(t[:, 2:6].copy())
            if boxes.max() <= 1.01:  # normalised
                boxes[:, [0, 2]] *= ws
                boxes[:, [1, 3]] *= hs
            elif scale != 1:
                boxes *= scale
            boxes[:, [0, 2]] += x0
            boxes[:, [1, 3]] += y0
            for j, box in enumerate(boxes):
                c = int(t[j, 1])
                conf = float(t[j, 6]) if is_pred else None
                if conf is not None and conf <= conf_thres:
                    continue
                name = names.get(c, str(c))
                label = name if conf is None else f"{name} {conf:.1f}"
                plot_one_box(box, mosaic, color=colors(c, bgr=True), label=label, line_thickness=tl)
        if paths is not None and i < len(paths):
            cv2.putText(mosaic, Path(paths[i]).name[:40], (x0 + 5, y0 + 15), 0, tl / 3, (220, 220, 220),
                        thickness=max(tl - 1, 1), lineType=cv2.LINE_AA)
        cv2.rectangle(mosaic, (x0, y0), (x0 + ws, y0 + hs), (255, 255, 255), thickness=2)
    if fname:
        _write_image(fname, mosaic)
    return mosaic


# --------------------------------------------------------------------------- dataset / training plots
def plot_labels(labels: np.ndarray, names=(), save_dir: PathLike = "") -> Path:
    """labels.jpg: instances per class, box outlines (centred), centre and size distributions.

    ``labels``: (n, 5) [cls, cx, cy, w, h] normalised, all images of the dataset together.
    """
    labels = np.asarray(labels, dtype=np.float32).reshape(-1, 5)
    names = names_dict(names)
    c, b = labels[:, 0].astype(int), labels[:, 1:]
    nc = max(int(c.max()) + 1 if len(c) else 0, len(names))
    fig = _figure(figsize=(10, 10), tight_layout=True)
    ax = fig.subplots(2, 2).ravel()
    counts = np.bincount(c, minlength=nc) if nc else np.zeros(0)
    ax[0].bar(range(nc), counts, color=[np.array(colors(i)) / 255 for i in range(nc)])
    ax[0].set_ylabel("instances")
    if 0 < nc <= 30:
        ax[0].set_xticks(range(nc))
        ax[0].set_xticklabels([names.get(i, str(i)) for i in range(nc)], rotation=90, fontsize=8)
    else:
        ax[0].set_xlabel("classes")
    # box outlines, all centred, first 1000
    canvas = np.full((500, 500, 3), 255, dtype=np.uint8)
    for cls, (bw, bh) in zip(c[:1000], b[:1000, 2:4]):
        x1, y1, x2, y2 = 250 - bw * 250, 250 - bh * 250, 250 + bw * 250, 250 + bh * 250
        cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), colors(cls), 1)
    ax[1].imshow(canvas)
    ax[1].axis("off")
    ax[1].set_title("boxes (first 1000, centred)")
    for a, (i, j, xl, yl) in zip(ax[2:], ((0, 1, "x", "y"), (2, 3, "width", "height"))):
        if len(b):
            a.hist2d(b[:, i], b[:, j], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
        a.set_xlabel(xl)
        a.set_ylabel(yl)
        a.set_xlim(0, 1)
        a.set_ylim(0, 1)
    return _save_figure(fig, Path(save_dir) / "labels.jpg", dpi=200)


def plot_results(csv_file: PathLike | None = None, save_dir: PathLike | None = None) -> Path:
    """results.png from results.csv (train.py's columns): losses, P, R, mAPs over epochs.

    Give the csv path, or ``save_dir`` holding results.csv; the png is written next to the csv.
    """
    import pandas as pd

    f = Path(csv_file) if csv_file else Path(save_dir or ".") / "results.csv"
    if not f.is_file():
        raise FileNotFoundError(f"plot_results: {f} not found")
    data = pd.read_csv(f)
    data.columns = [str(s).strip() for s in data.columns]
    panels = ["train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
              "val/box_loss", "val/obj_loss", "val/cls_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"]
    missing = [p for p in panels + ["epoch"] if p not in data.columns]
    if missing:
        raise ValueError(f"plot_results: {f} lacks columns {missing}")
    fig = _figure(figsize=(15, 6), tight_layout=True)
    ax = fig.subplots(2, 5).ravel()
    x = data["epoch"].to_numpy()
    for a, col in zip(ax, panels):
        y = data[col].to_numpy(dtype=float)
        a.plot(x, y, marker=".", linewidth=2, markersize=6, label="results")
        if len(y) >= 5:  # light smoothing guide
            k = max(len(y) // 5, 1)
            a.plot(x, np.convolve(np.pad(y, k, mode="edge"), np.ones(2 * k + 1) / (2 * k + 1), "valid"),
                   ":", label="smooth", linewidth=2)
        a.set_title(col, fontsize=12)
        a.set_xlabel("epoch")
    ax[-1].legend()
    return _save_figure(fig, f.with_name("results.png"), dpi=200)


# --------------------------------------------------------------------------- metric curves
def _save_unit_curve(fig, ax, xlabel: str, ylabel: str, save_path: PathLike) -> Path:
    """Label a curve plot on the unit square, put the legend outside, save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    return _save_figure(fig, save_path, dpi=250)

def plot_pr_curve(px: np.ndarray, py: np.ndarray, ap: np.ndarray, save_path: PathLike = "PR_curve.png",
                  names=()) -> Path:
    """Precision-recall curves (IoU 0.5) per class and their mean; ``py`` (1000, nc), ``ap`` (nc, T)."""
    names = names_dict(names)
    fig = _figure(figsize=(9, 6), tight_layout=True)
    ax = fig.subplots(1, 1)
    py = np.asarray(py).reshape(len(px), -1)
    if 0 < py.shape[1] < 21:  # per-class legend only when readable
        for i, (k, y) in enumerate(zip(sorted(names) or range(py.shape[1]), py.T)):
            ax.plot(px, y, linewidth=1, label=f"{names.get(k, k)} {ap[i, 0]:.3f}")
    else:
        ax.plot(px, py, linewidth=1, color="grey")
    ax.plot(px, py.mean(1), linewidth=3, color="blue", label=f"all classes {ap[:, 0].mean():.3f} mAP@0.5")
    return _save_unit_curve(fig, ax, "Recall", "Precision", save_path)


def plot_mc_curve(px: np.ndarray, py: np.ndarray, save_path: PathLike = "mc_curve.png", names=(),
                  xlabel: str = "Confidence", ylabel: str = "Metric") -> Path:
    """A metric (F1, P or R) against confidence, per class (``py`` (nc, 1000)) and mean."""
    names = names_dict(names)
    fig = _figure(figsize=(9, 6), tight_layout=True)
    ax = fig.subplots(1, 1)
    py = np.asarray(py).reshape(-1, len(px))
    if 0 < len(py) < 21:
        for k, y in zip(sorted(names) or range(len(py)), py):
            ax.plot(px, y, linewidth=1, label=f"{names.get(k, k)}")
    else:
        ax.plot(px, py.T, linewidth=1, color="grey")
    y = py.mean(0)
    ax.plot(px, y, linewidth=3, color="blue", label=f"all classes {y.max():.2f} at {px[y.argmax()]:.3f}")
    return _save_unit_curve(fig, ax, xlabel, ylabel, save_path)


def plot_confusion_matrix(matrix: np.ndarray, save_path: PathLike = "confusion_matrix.png", names=(),
                          normalize: bool = True) -> Path:
    """Heatmap of a (nc + 1, nc + 1) confusion matrix, rows predicted, columns true, last = background."""
    import seaborn as sn

    nc = matrix.shape[0] - 1
    names = names_dict(names)
    array = matrix / ((matrix.sum(0).reshape(1, -1) + 1e-9) if normalize else 1)
    array[array < 0.005] = np.nan  # empty cells stay blank
    fig = _figure(figsize=(12, 9), tight_layout=True)
    ax = fig.subplots(1, 1)
    labels = 0 < nc < 99
    ticks = [names.get(i, str(i)) for i in range(nc)] + ["background"] if labels else "auto"
    sn.heatmap(array, ax=ax, annot=nc < 30, annot_kws={"size": 8}, cmap="Blues",
               fmt=".2f" if normalize else ".0f", square=True, vmin=0.0,
               xticklabels=ticks, yticklabels=ticks).set_facecolor((1, 1, 1))
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion matrix" + (" (normalised by true class)" if normalize else ""))
    return _save_figure(fig, save_path, dpi=250)


def plot_study(study_txt: PathLike) -> Path:
    """study.png from a ``test.py --task study`` table: mAP@.5:.95 and inference time against image size."""
    y = np.atleast_2d(np.loadtxt(study_txt))
    fig = _figure(figsize=(10, 4), tight_layout=True)
    ax = fig.subplots(1, 2)
    ax[0].plot(y[:, 0], y[:, 4], ".-", linewidth=2, markersize=8)
    ax[0].set_xlabel("image size (pixels)")
    ax[0].set_ylabel("mAP@.5:.95")
    ax[1].plot(y[:, 0], y[:, 9], ".-", linewidth=2, markersize=8)
    ax[1].set_xlabel("image size (pixels)")
    ax[1].set_ylabel("inference (ms / image)")
    for a in ax:
        a.grid(alpha=0.3)
    return _save_figure(fig, Path(study_txt).with_name("study.png"), dpi=200)


def safe_plot(fn, *args, **kwargs):
    """Run a plot function, logging (not raising) any failure: plots never stop training or testing."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        LOGGER.warning(f"WARNING: {getattr(fn, '__name__', 'plot')} failed: {e}")
        return None
