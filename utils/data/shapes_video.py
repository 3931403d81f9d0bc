"""A synthetic video of moving shapes with ground-truth tracks, for scoring trackers.

The shapes are those of the built-in dataset (``utils.data.shapes``: circles, rectangles, triangles,
stars, drawn the same way, at the same size relative to the frame) on a fixed gradient background
with fresh sensor noise in every frame. The scene is built so that each thing a tracker must
survive happens at least once: two shapes cross (the later-drawn one hides the other), shapes
enter and leave through the frame's edges, one shape disappears for ``hidden`` frames and comes
back on its path, one moves slowly and turns back at the edges.

Ground truth rows are ``frame, id, x1, y1, x2, y2, cls, visibility``: the pixel extent of the
whole shape inside the frame (the MOTChallenge convention: an occluded object's box is where the
object is), visibility = drawn pixels / the shape's area. A shape counts as present in a frame
when at least ``MIN_VISIBLE`` of it is drawn; hidden frames and shapes mostly outside the frame
or behind another are left out.

``noisy_detections`` turns the ground truth into what a detector would give (jittered boxes,
missed objects, low scores under occlusion, false positives), to score a tracker apart from any
detector. CLI: ``python -m utils.data.shapes_video --out video.mp4 [--frames 90 --seed 0]`` writes the
video and ``<out>.gt.txt`` (MOTChallenge ground truth: ``frame,id,left,top,w,h,1,cls,visibility``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from utils.atomic import atomic_path, write_text
from utils.cli import require, run_cli
from utils.data.shapes import NAMES, _background, _pick_colour, _rasterize, _unit_polygon

MIN_VISIBLE = 0.35     # a shape with less of its area drawn is not in the ground truth
SIZE = (0.28, 0.40)    # shape extent as a fraction of the frame's short side (the dataset's 0.22-0.45)


@dataclass
class MovingShape:
    """One object: a polygon (centred at 0) moving at constant velocity, optionally bouncing."""
    track_id: int
    cls: int
    poly: np.ndarray
    colour: np.ndarray
    start: np.ndarray
    velocity: np.ndarray
    first: int
    last: int
    hidden: tuple[int, int] = (0, 0)     # frames [a, b) in which it is not drawn
    bounce: bool = False

    def centre(self, t: int, w: int, h: int) -> np.ndarray:
        """Position at frame ``t``; a bouncing shape reflects off the frame's edges."""
        p = self.start + self.velocity * (t - self.first)
        if not self.bounce:
            return p
        half = (self.poly.max(0) - self.poly.min(0)) / 2
        lo, hi = half, np.array([w, h], float) - half
        span = hi - lo
        q = np.mod(p - lo, 2 * span)
        return lo + np.where(q > span, 2 * span - q, q)


@dataclass
class Video:
    """Frames (BGR uint8), ground truth (n, 8) rows and the shapes that made them."""
    frames: list[np.ndarray]
    gt: np.ndarray
    shapes: list[MovingShape] = field(default_factory=list)
    fps: float = 30.0


def _shape(rng: np.random.Generator, tid: int, side: int, bg: np.ndarray, **kw) -> MovingShape:
    cls = int(rng.integers(0, len(NAMES)))
    unit = _unit_polygon(cls, rng)
    ext = unit.max(0) - unit.min(0)
    poly = unit * (rng.uniform(*SIZE) * side / ext.max())
    return MovingShape(tid, cls, poly, _pick_colour(rng, bg.reshape(-1, 3).mean(0)), **kw)


def _scene(rng: np.random.Generator, n: int, w: int, h: int, bg: np.ndarray, hidden: int) -> list[MovingShape]:
    """The scripted scene: a crossing pair, a diagonal walker that hides, a bouncer, a late entrant."""
    side = min(w, h)
    sp = lambda lo, hi: float(rng.uniform(lo, hi)) * w / n  # noqa: E731 - speed in px/frame to cover lo-hi widths
    y_cross = h * rng.uniform(0.4, 0.6)
    mid = n // 2
    return [
        _shape(rng, 1, side, bg, start=np.array([-0.1 * w, y_cross]), velocity=np.array([sp(1.35, 1.5), 0.0]),
               first=0, last=n - 1),
        _shape(rng, 2, side, bg, start=np.array([1.1 * w, y_cross + rng.uniform(-0.05, 0.05) * h]),
               velocity=np.array([-sp(1.35, 1.5), 0.0]), first=0, last=n - 1),
        _shape(rng, 3, side, bg, start=np.array([0.2 * w, -0.1 * h]),
               velocity=np.array([sp(0.5, 0.7), h / n * rng.uniform(1.1, 1.3)]), first=0, last=n - 1,
               hidden=(mid - hidden // 2, mid - hidden // 2 + hidden)),
        _shape(rng, 4, side, bg, start=np.array([0.15 * w, 0.85 * h]), velocity=np.array([sp(0.5, 0.7), -sp(0.1, 0.2)]),
               first=0, last=n - 1, bounce=True),
        _shape(rng, 5, side, bg, start=np.array([0.9 * w, 1.15 * h]), velocity=np.array([-sp(0.2, 0.3), -sp(0.7, 0.9)]),
               first=n // 3, last=n - 1),
    ]


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _draw_frame(t: int, shapes: Sequence[MovingShape], bg: np.ndarray, rng: np.random.Generator,
                noise: float) -> tuple[np.ndarray, list[list[float]]]:
    h, w = bg.shape[:2]
    img = bg.copy()
    owner = np.full((h, w), -1, np.int16)
    boxes: dict[int, np.ndarray] = {}
    for k, s in enumerate(shapes):
        if not s.first <= t <= s.last or s.hidden[0] <= t < s.hidden[1]:
            continue
        m = _rasterize(s.poly + s.centre(t, w, h), h, w)
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        boxes[k] = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
        img[m] = s.colour
        owner[m] = k
    img += np.float32(noise) * rng.standard_normal(img.shape, dtype=np.float32)
    rows = []
    for k, box in boxes.items():
        vis = float((owner == k).sum()) / max(_area(shapes[k].poly), 1.0)
        if vis >= MIN_VISIBLE:
            rows.append([t + 1, shapes[k].track_id, *box, shapes[k].cls, min(vis, 1.0)])
    return np.clip(np.round(img), 0, 255).astype(np.uint8), rows


def make_video(seed: int = 0, n_frames: int = 90, size: tuple[int, int] = (256, 192), hidden: int = 6,
               fps: float = 30.0) -> Video:
    """Render the scene: a pure function of its arguments."""
    require(n_frames >= 20, f"n_frames {n_frames}: at least 20 frames are needed for the scene")
    w, h = int(size[0]), int(size[1])
    rng = np.random.default_rng([seed, 7])
    bg = _background(rng, h, w)
    shapes = _scene(rng, n_frames, w, h, bg, hidden)
    noise = float(rng.uniform(3, 8))
    frames, rows = [], []
    for t in range(n_frames):
        img, r = _draw_frame(t, shapes, bg, rng, noise)
        frames.append(img)
        rows += r
    return Video(frames, np.array(rows, np.float64).reshape(-1, 8), shapes, fps)


def noisy_detections(gt: np.ndarray, n_frames: int, size: tuple[int, int], seed: int = 0, miss: float = 0.1,
                     jitter: float = 0.03, false_pos: float = 0.3) -> list[np.ndarray]:
    """Per frame (n, 6) ``x1, y1, x2, y2, conf, cls`` detections made from ground truth ``gt``.

    Each object is missed with probability ``miss``; boxes move by ``jitter`` of their size; scores
    are 0.5-0.95, but 0.15-0.45 for an object less than 70 % visible (BYTE's low-score case);
    ``false_pos`` is the mean number of spurious low-score boxes per frame.
    """
    rng = np.random.default_rng([seed, 11])
    w, h = size
    out = []
    for f in range(1, n_frames + 1):
        rows = []
        for _, _, x1, y1, x2, y2, cls, vis in gt[gt[:, 0] == f]:
            if rng.random() < miss:
                continue
            bw, bh = x2 - x1, y2 - y1
            d = rng.normal(0, jitter, 4) * [bw, bh, bw, bh]
            score = rng.uniform(0.5, 0.95) if vis >= 0.7 else rng.uniform(0.15, 0.45)
            rows.append([x1 + d[0], y1 + d[1], x2 + d[2], y2 + d[3], score, cls])
        for _ in range(rng.poisson(false_pos)):
            bw, bh = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.3) * h
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            rows.append([x, y, x + bw, y + bh, rng.uniform(0.1, 0.4), int(rng.integers(0, len(NAMES)))])
        out.append(np.array(rows, np.float64).reshape(-1, 6))
    return out


def gt_mot_text(gt: np.ndarray) -> str:
    """MOTChallenge ground-truth rows ``frame,id,left,top,width,height,1,cls,visibility``."""
    return "".join(f"{int(f)},{int(i)},{x1:g},{y1:g},{x2 - x1:g},{y2 - y1:g},1,{int(c)},{v:.3f}\n"
                   for f, i, x1, y1, x2, y2, c, v in gt)


def write_video(path: Path | str, video: Video, gt_path: Optional[Path | str] = None) -> Path:
    """Write the frames as an mp4 (``mp4v``) atomically, and the ground truth beside it (``<path>.gt.txt``)."""
    path = Path(path)
    h, w = video.frames[0].shape[:2]
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), video.fps, (w, h))
        require(writer.isOpened(), f"{path}: OpenCV cannot write mp4v video here")
        for im in video.frames:
            writer.write(im)
        writer.release()
    write_text(gt_path or path.with_name(path.name + ".gt.txt"), gt_mot_text(video.gt))
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="utils/shapes_video.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output .mp4 (ground truth beside it as <out>.gt.txt)")
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, default=[256, 192], metavar=("W", "H"))
    p.add_argument("--fps", type=float, default=30.0)
    a = p.parse_args(argv)
    require(min(a.size) >= 64, f"--size {a.size}: at least 64 px each")
    require(a.fps > 0, f"--fps {a.fps}: must be positive")
    v = make_video(a.seed, a.frames, tuple(a.size), fps=a.fps)
    write_video(a.out, v)
    print(f"{a.out}: {len(v.frames)} frames, {len(v.shapes)} shapes, {len(v.gt)} ground-truth boxes")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, prog="utils/shapes_video.py"))
