"""Built-in synthetic detection dataset ("shapes") generated on first use, with no download.

Filled circles, rectangles, triangles and stars of varied size and colour, one to three per
image, partly overlapping, on smooth colour-gradient backgrounds with sensor noise. Sized so
that the README's main job (``python train.py``: a MobileOne detector from scratch, 15 minutes
on 2 CPU cores at 128 px) can learn it: images of 128-192 px, objects 22-45 % of the short
side; rectangles and triangles at most 15 degrees from axis-aligned (triangles point down),
circles and stars at any rotation.

Every image is drawn from its own seeded RNG, so the same seed gives the same files byte for
byte (on one installation: other numpy / OpenCV / libjpeg builds may differ in the last bit of
a few pixels, but the RNG stream, and so the labels, never depend on pixel values). Each shape
is a rotated polygon (a circle is a 96-gon) rasterised at 1/16 px precision; its box is the
exact pixel extent of that raster (within 1 px of the polygon's own extent). A shape is only placed where it leaves
every earlier shape mostly visible, with its visible pixels still reaching each side of its
box within 2 px, so labels stay tight under overlap.

Layout (YOLOv7): ``root/images/{train,val}/*.jpg`` and ``root/labels/{train,val}/*.txt``,
plus ``root/shapes.json``, a marker written last that records the generator version and
parameters; a folder without a matching marker or with missing files is regenerated.

CLI: ``python -m utils.data.shapes --out datasets/shapes [--n-train 400 --n-val 100 --seed 0]``.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from utils.atomic import atomic_dir, temp_name
from utils.boxes import xyxy2xywhn
from utils.cli import require, run_cli
from utils.log import LOGGER

NAMES = ["circle", "rectangle", "triangle", "star"]
GENERATOR_VERSION = 4          # bump whenever the drawn bytes change: old folders get rebuilt
MARKER = "shapes.json"
DEFAULTS = dict(n_train=400, n_val=100, seed=0, img_size=(128, 192))
_SPLITS = ("train", "val")
_JPEG_QUALITY = 92
_SUBPIX = 4                    # cv2.fillPoly fractional bits: vertices at 1/16 px
_MIN_VISIBLE = 0.65            # an occluded shape keeps at least this fraction of its pixels
_BOX_TOL = 2                   # ... and its visible pixels reach each box side within this (px)
_OBJ_SIZE = (0.22, 0.45)       # object extent as a fraction of the image's short side
_MAX_OBJECTS = 3               # 1 to this many objects per image
_MAX_TURN_DEG = 15.0           # rectangles and triangles turn at most this far from their base pose


@dataclass
class Sample:
    """One rendered image: BGR uint8 pixels, classes (n,), boxes (n, 4) pixel xyxy, masks (n, H, W) bool."""

    img: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray


# --------------------------------------------------------------------------- geometry
def _unit_polygon(cls: int, rng: np.random.Generator) -> np.ndarray:
    """Vertices (k, 2) of a shape of class ``cls`` centred at 0 with radius about 1, rotated."""
    if cls == 0:  # circle
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif cls == 1:  # rectangle (squares included), aspect 0.45-1
        a = rng.uniform(0.45, 1.0)
        pts = np.array([[-1, -a], [1, -a], [1, a], [-1, a]], float)
    elif cls == 2:  # triangle: near-equilateral with jittered corners
        ang = np.deg2rad(90 + 120 * np.arange(3) + rng.uniform(-12, 12, 3))
        r = rng.uniform(0.85, 1.0, 3)
        pts = np.stack([r * np.cos(ang), r * np.sin(ang)], 1)
    elif cls == 3:  # five-pointed star
        inner = rng.uniform(0.38, 0.5)
        ang = np.deg2rad(90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        pts = np.stack([r * np.cos(ang), r * np.sin(ang)], 1)
    else:
        raise ValueError(f"unknown shape class {cls}")
    th = rng.uniform(0, 2 * np.pi) if cls in (0, 3) else np.deg2rad(rng.uniform(-_MAX_TURN_DEG, _MAX_TURN_DEG))
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return pts @ rot.T


def _rasterize(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boolean mask of a polygon given in continuous pixel coordinates (pixel i spans [i, i+1])."""
    mask = np.zeros((h, w), np.uint8)
    pts = np.round((poly - 0.5) * (1 << _SUBPIX)).astype(np.int32)  # cv2 puts vertices at pixel centres
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=_SUBPIX)
    return mask.astype(bool)


# --------------------------------------------------------------------------- drawing
def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float32 BGR background: a linear gradient between two random colours at a random angle."""
    c0, c1 = rng.uniform(20, 235, 3).astype(np.float32), rng.uniform(20, 235, 3).astype(np.float32)
    th = rng.uniform(0, 2 * np.pi)
    xs = np.arange(w, dtype=np.float32)[None, :] / w
    ys = np.arange(h, dtype=np.float32)[:, None] / h
    t = np.float32(np.cos(th)) * xs + np.float32(np.sin(th)) * ys
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1e-6))[..., None]
    return np.ascontiguousarray(c0 * (1 - t) + c1 * t, dtype=np.float32)


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A saturated BGR colour that stands out (L2 >= 90) from the mean background ``under``.

    Always draws the same number of random values, so the RNG stream (and with it every
    label) does not depend on pixel values.
    """
    hsv = np.stack([rng.integers(0, 180, 20), rng.integers(110, 256, 20), rng.integers(90, 256, 20)], 1)
    cands = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2BGR)[0].astype(np.float32)
    d = np.linalg.norm(cands - under, axis=1)
    ok = np.nonzero(d >= 90)[0]
    return cands[ok[0] if len(ok) else int(d.argmax())]


def _visible_ok(mask: np.ndarray, box: np.ndarray, area: int) -> bool:
    """True when the visible part ``mask`` keeps enough of ``area`` and still spans ``box``."""
    n = int(mask.sum())
    if n < _MIN_VISIBLE * area:
        return False
    ys, xs = np.nonzero(mask)
    vis = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
    return bool(np.all(np.abs(vis - box) <= _BOX_TOL))


def render_sample(seed: int, split: str, index: int,
                  img_size: Sequence[int] = DEFAULTS["img_size"]) -> Sample:
    """Draw image ``index`` of ``split``; a pure function of its arguments (deterministic)."""
    rng = np.random.default_rng([seed, _SPLITS.index(split), index])
    lo, hi = int(img_size[0]), int(img_size[1])
    w = int(rng.integers(lo, hi + 1))
    h = int(np.clip(round(w * rng.uniform(0.75, 1.34)), lo, hi))
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, np.int16)   # which shape owns each pixel (-1 = background)
    classes, boxes, polys, areas = [], [], [], []
    n_want = int(rng.integers(1, _MAX_OBJECTS + 1))
    side = min(h, w)
    for _ in range(n_want):
        for _attempt in range(25):
            cls = int(rng.integers(0, len(NAMES)))
            unit = _unit_polygon(cls, rng)
            ext = unit.max(0) - unit.min(0)
            poly = unit * (rng.uniform(*_OBJ_SIZE) * side / ext.max())
            lo_xy, hi_xy = poly.min(0), poly.max(0)
            cx = rng.uniform(-lo_xy[0] + 1, w - hi_xy[0] - 1)
            cy = rng.uniform(-lo_xy[1] + 1, h - hi_xy[1] - 1)
            poly = poly + [cx, cy]
            m = _rasterize(poly, h, w)
            if m.sum() < 16:
                continue
            ys, xs = np.nonzero(m)  # the box of the pixels actually drawn (within 1 px of the polygon's)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
            ok = True
            for k in range(len(classes)):  # earlier shapes must stay recognisable and tight
                x1, y1, x2, y2 = boxes[k].astype(int)
                sub = (owner[y1:y2, x1:x2] == k) & ~m[y1:y2, x1:x2]
                if sub.sum() == (owner[y1:y2, x1:x2] == k).sum():
                    continue  # untouched
                if not _visible_ok(sub, boxes[k] - [x1, y1, x1, y1], areas[k]):
                    ok = False
                    break
            if not ok:
                continue
            under = img[m].mean(0)
            img[m] = _pick_colour(rng, under)
            owner[m] = len(classes)
            classes.append(cls)
            boxes.append(box)
            polys.append(poly)
            areas.append(int(m.sum()))
            break
    # global photometric noise: optional blur, then per-pixel Gaussian noise
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    img += np.float32(rng.uniform(2, 10)) * rng.standard_normal(img.shape, dtype=np.float32)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    n = len(classes)
    masks = np.stack([owner == k for k in range(n)]) if n else np.zeros((0, h, w), bool)
    bx = np.array(boxes, np.float64).reshape(-1, 4)
    bx[:, [0, 2]] = bx[:, [0, 2]].clip(0, w)
    bx[:, [1, 3]] = bx[:, [1, 3]].clip(0, h)
    return Sample(img, np.array(classes, np.int64), bx, masks)


def _label_text(s: Sample) -> str:
    h, w = s.img.shape[:2]
    xywhn = xyxy2xywhn(s.boxes, w=w, h=h)
    return "".join(f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, (x, y, bw, bh) in zip(s.classes, xywhn))


# --------------------------------------------------------------------------- dataset folders
def _expected_files(root: Path, n_train: int, n_val: int) -> Iterator[Path]:
    for split, n in zip(_SPLITS, (n_train, n_val)):
        for i in range(n):
            yield root / "images" / split / f"{i:06d}.jpg"
            yield root / "labels" / split / f"{i:06d}.txt"


def _params(n_train: int, n_val: int, seed: int, img_size: Sequence[int]) -> dict:
    return {"generator": "utils.shapes", "version": GENERATOR_VERSION, "seed": int(seed),
            "n_train": int(n_train), "n_val": int(n_val), "img_size": [int(v) for v in img_size],
            "names": NAMES}


def is_complete(root: Path, n_train: int = DEFAULTS["n_train"], n_val: int = DEFAULTS["n_val"],
                seed: int = DEFAULTS["seed"], img_size: Sequence[int] = DEFAULTS["img_size"]) -> bool:
    """True when ``root`` holds a finished dataset of exactly these parameters (marker + all files)."""
    root = Path(root)
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker != _params(n_train, n_val, seed, img_size):
        return False
    return all(f.is_file() and f.stat().st_size > 0 for f in _expected_files(root, n_train, n_val))


def generate_shapes(root: Path | str, n_train: int = DEFAULTS["n_train"], n_val: int = DEFAULTS["n_val"],
                    seed: int = DEFAULTS["seed"], img_size: Sequence[int] = DEFAULTS["img_size"]) -> Path:
    """Write the dataset into ``root`` (which must not exist or be empty); returns ``root``.

    Not atomic by itself: ``ensure_shapes`` calls it on a temporary folder (``atomic_dir``).
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; generate_shapes writes only into a new folder")
    if not (32 <= int(img_size[0]) <= int(img_size[1])):
        raise ValueError(f"img_size must be (min, max) with 32 <= min <= max, got {img_size}")
    t0 = time.time()
    counts = {}
    for split, n in zip(_SPLITS, (n_train, n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        nobj = 0
        for i in range(n):
            s = render_sample(seed, split, i, img_size)
            ok, buf = cv2.imencode(".jpg", s.img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {split} image {i}")
            (root / "images" / split / f"{i:06d}.jpg").write_bytes(buf.tobytes())
            (root / "labels" / split / f"{i:06d}.txt").write_text(_label_text(s))
            nobj += len(s.classes)
        counts[split] = (n, nobj)
    (root / MARKER).write_text(json.dumps(_params(n_train, n_val, seed, img_size), indent=1))
    LOGGER.info("shapes: generated %s in %.1fs (%s)", root, time.time() - t0,
                ", ".join(f"{k}: {n} images, {o} objects" for k, (n, o) in counts.items()))
    return root


@contextlib.contextmanager
def _lock(path: Path):
    """Inter-process lock (POSIX flock) so parallel ranks/workers generate once; no-op elsewhere."""
    try:
        import fcntl
    except ImportError:  # Windows: rely on the atomic rename alone
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _looks_generated(root: Path) -> bool:
    """True when ``root`` holds only what this module (and label caches) would put there."""
    return all(p.name in ("images", "labels", MARKER) or p.name.endswith(".cache") for p in root.iterdir())


def ensure_shapes(root: Path | str, n_train: int = DEFAULTS["n_train"], n_val: int = DEFAULTS["n_val"],
                  seed: int = DEFAULTS["seed"], img_size: Sequence[int] = DEFAULTS["img_size"]) -> None:
    """Make sure ``root`` holds the complete shapes dataset; (re)generate it atomically if not.

    A folder that is missing, partial (files deleted, generation interrupted) or written by
    another generator version/parameters is rebuilt in a sibling temp folder and swapped in
    by rename. A non-empty folder with foreign files is never deleted: that is an error.
    """
    root = Path(root).resolve()
    if is_complete(root, n_train, n_val, seed, img_size):
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with _lock(root.parent / f".{root.name}.lock"):
        if is_complete(root, n_train, n_val, seed, img_size):  # another process finished meanwhile
            return
        if root.exists() and (not root.is_dir() or not _looks_generated(root)):
            raise FileExistsError(f"{root} exists and holds files other than a shapes dataset; "
                                  f"refusing to overwrite it (choose another 'path' or remove it)")
        reason = "missing" if not root.exists() else "incomplete or from another generator version"
        LOGGER.info("shapes: dataset at %s is %s, generating it (seed %d)", root, reason, seed)
        for stale in root.parent.glob(f"{glob.escape(temp_name(root))}*.tmp"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)  # (under the lock: no other run is writing them)
        with atomic_dir(root) as tmp:  # a failure leaves the old folder and no temp; errors name root
            generate_shapes(tmp, n_train, n_val, seed, img_size)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.data.shapes", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("datasets/shapes"), help="dataset root to create")
    p.add_argument("--n-train", type=int, default=DEFAULTS["n_train"])
    p.add_argument("--n-val", type=int, default=DEFAULTS["n_val"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--img-size", type=int, nargs=2, default=list(DEFAULTS["img_size"]), metavar=("MIN", "MAX"))
    p.add_argument("--verbose", action="store_true", help="show the full traceback of an error")
    a = p.parse_args(argv)
    require(a.n_train >= 1, f"--n-train {a.n_train}: must be at least 1")
    require(a.n_val >= 1, f"--n-val {a.n_val}: must be at least 1")
    require(32 <= a.img_size[0] <= a.img_size[1], f"--img-size {a.img_size[0]} {a.img_size[1]}: "
            f"needs 32 <= MIN <= MAX")
    t0 = time.time()
    done = is_complete(a.out, a.n_train, a.n_val, a.seed, a.img_size)
    ensure_shapes(a.out, a.n_train, a.n_val, a.seed, a.img_size)
    what = "already complete" if done else f"generated in {time.time() - t0:.1f}s"
    print(f"shapes dataset at {a.out.resolve()}: {what}; {a.n_train} train + {a.n_val} val images, "
          f"{len(NAMES)} classes {NAMES}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, prog="python -m utils.data.shapes"))
