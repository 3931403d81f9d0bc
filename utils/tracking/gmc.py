"""Camera-motion compensation (BoT-SORT): the affine motion of the background between two frames.

``CameraMotion(method).estimate(frame, boxes)`` returns the 2x3 affine that maps the previous
frame's pixel coordinates into this frame's; the tracker applies it to its predicted states so a
panning or shaking camera does not look like every object moving at once.

Methods: ``sparseOptFlow`` (corners tracked with pyramidal Lucas-Kanade, a RANSAC-fitted
rotation + scale + translation; detection boxes are masked out so moving objects do not vote, and
an estimate that too few corners agree on is not used),
``ecc`` (OpenCV's enhanced-correlation alignment, Euclidean motion) and ``none``. Both work on a
grey image downscaled by ``downscale``. A frame whose size differs from the previous one (a
reconnected stream), or whose estimate fails, gives the identity and restarts from that frame.
"""
from __future__ import annotations

import logging
from typing import Optional

import cv2
import numpy as np

LOGGER = logging.getLogger(__name__)
METHODS = ("sparseOptFlow", "ecc", "none")
MIN_INLIERS = 10         # sparseOptFlow: fewest RANSAC inliers for an estimate
MIN_INLIER_SHARE = 0.3   # ... and their least share of the tracked corners


class CameraMotion:
    """Estimates frame-to-frame background motion; keeps the previous frame's features."""

    def __init__(self, method: str = "sparseOptFlow", downscale: int = 2):
        if method not in METHODS:
            raise ValueError(f"camera-motion method {method!r}: expected one of {', '.join(METHODS)}")
        self.method, self.downscale = method, max(1, int(downscale))
        self._prev: Optional[np.ndarray] = None        # previous grey frame (downscaled)
        self._prev_pts: Optional[np.ndarray] = None    # its corner features (sparseOptFlow)

    def reset(self) -> None:
        """Forget the previous frame (the next estimate is the identity)."""
        self._prev, self._prev_pts = None, None

    def estimate(self, frame: Optional[np.ndarray], boxes: Optional[np.ndarray] = None) -> np.ndarray:
        """2x3 affine from the previous frame to ``frame`` (BGR or grey); identity without a usable pair."""
        eye = np.eye(2, 3)
        if self.method == "none" or frame is None:
            return eye
        grey = self._grey(frame)
        prev, self._prev = self._prev, grey
        if prev is None or prev.shape != grey.shape:
            self._prev_pts = self._corners(grey, boxes) if self.method == "sparseOptFlow" else None
            return eye
        try:
            a = self._sparse(prev, grey, boxes) if self.method == "sparseOptFlow" else self._ecc(prev, grey)
        except cv2.error as e:
            LOGGER.debug(f"camera motion: {self.method} failed ({str(e).splitlines()[0]}); identity used")
            a = None
        if a is None:
            return eye
        a = a.astype(np.float64)
        a[:, 2] *= self.downscale  # translation back to full-resolution pixels
        return a

    def _grey(self, frame: np.ndarray) -> np.ndarray:
        g = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        if self.downscale > 1:
            h, w = g.shape[:2]
            g = cv2.resize(g, (max(1, w // self.downscale), max(1, h // self.downscale)),
                           interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(g)

    def _corners(self, grey: np.ndarray, boxes: Optional[np.ndarray]) -> Optional[np.ndarray]:
        mask = np.full(grey.shape, 255, np.uint8)
        if boxes is not None:
            for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4) / self.downscale:
                mask[max(int(y1), 0):max(int(np.ceil(y2)), 0), max(int(x1), 0):max(int(np.ceil(x2)), 0)] = 0
        return cv2.goodFeaturesToTrack(grey, maxCorners=1000, qualityLevel=0.01, minDistance=1, blockSize=3,
                                       mask=mask)

    def _sparse(self, prev: np.ndarray, grey: np.ndarray, boxes: Optional[np.ndarray]) -> Optional[np.ndarray]:
        prev_pts, self._prev_pts = self._prev_pts, self._corners(grey, boxes)
        if prev_pts is None or len(prev_pts) < 4:
            return None
        pts, status, _ = cv2.calcOpticalFlowPyrLK(prev, grey, prev_pts, None)
        ok = status.reshape(-1) == 1
        if ok.sum() < 4:
            return None
        a, inliers = cv2.estimateAffinePartial2D(prev_pts[ok], pts[ok], method=cv2.RANSAC)
        if a is None or inliers is None:
            return None
        n_in = int(inliers.sum())
        if n_in < MIN_INLIERS or n_in < MIN_INLIER_SHARE * int(ok.sum()):
            return None  # no consistent background motion (texture-less or noise-like frames)
        return a

    def _ecc(self, prev: np.ndarray, grey: np.ndarray) -> Optional[np.ndarray]:
        warp = np.eye(2, 3, dtype=np.float32)
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
        _, warp = cv2.findTransformECC(prev, grey, warp, cv2.MOTION_EUCLIDEAN, criteria, None, 1)
        return warp
