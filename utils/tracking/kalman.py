"""Constant-velocity Kalman filters over boxes, batched over tracks.

The state is a box measurement ``z`` (4 values) and its velocity: ``[z, dz/dt]`` (8 values), with
``dt`` one frame. Two measurement spaces:

- :class:`KalmanXYAH` (ByteTrack, as SORT/DeepSORT): centre x, y, aspect ratio w/h, height; the
  noise of every coordinate scales with the height, the aspect ratio gets a small fixed noise;
- :class:`KalmanXYWH` (BoT-SORT): centre x, y, width, height; x and w noise scale with the width,
  y and h noise with the height, so boxes that are much wider than tall (or the reverse) get noise
  that fits each axis.

All methods take and return arrays over ``n`` tracks: means (n, 8) and covariances (n, 8, 8), so a
frame's prediction is a few array operations whatever the number of tracks.
"""
from __future__ import annotations

import numpy as np

STD_POSITION = 1.0 / 20   # position noise per unit of box size (ByteTrack / BoT-SORT papers)
STD_VELOCITY = 1.0 / 160  # velocity noise per unit of box size


def xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
    """(n, 4) corner boxes -> (n, 4) centre x, y, width, height."""
    b = np.asarray(b, np.float64).reshape(-1, 4)
    wh = b[:, 2:] - b[:, :2]
    return np.concatenate((b[:, :2] + wh / 2, wh), 1)


class _BoxKalman:
    """The shared filter; subclasses give the measurement space and the per-coordinate noise."""

    def __init__(self) -> None:
        self.F = np.eye(8)
        self.F[:4, 4:] = np.eye(4)  # position += velocity each frame
        self.H = np.eye(4, 8)

    # --- measurement space, defined by subclasses
    def to_measurement(self, xyxy: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_xyxy(self, mean: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _scales(self, z: np.ndarray) -> np.ndarray:
        """(n, 4) size that scales the noise of each measured coordinate."""
        raise NotImplementedError

    def _fixed(self) -> tuple[np.ndarray, np.ndarray]:
        """(mask (4,), value (4,)): coordinates whose noise is a fixed value rather than a scale."""
        return np.zeros(4, bool), np.zeros(4)

    def _std(self, z: np.ndarray, weight: float, fixed_value_factor: float = 1.0) -> np.ndarray:
        std = weight * self._scales(z)
        mask, value = self._fixed()
        return np.where(mask, value * fixed_value_factor, std)

    # --- filter steps
    def initiate(self, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks at rest from (n, 4) boxes: their means and covariances."""
        z = self.to_measurement(xyxy)
        mean = np.concatenate((z, np.zeros_like(z)), 1)
        std = np.concatenate((self._std(z, 2 * STD_POSITION), self._std(z, 10 * STD_VELOCITY, 1e-3)), 1)
        return mean, _diag(std ** 2)

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame ahead: ``x = F x``, ``P = F P F^T + Q``."""
        if not len(mean):
            return mean, cov
        z = mean[:, :4]
        std = np.concatenate((self._std(z, STD_POSITION), self._std(z, STD_VELOCITY, 1e-3)), 1)
        mean = mean @ self.F.T
        cov = self.F @ cov @ self.F.T + _diag(std ** 2)
        return mean, cov

    def update(self, mean: np.ndarray, cov: np.ndarray, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct predicted states with measured (n, 4) boxes (the Kalman gain from a Cholesky solve)."""
        if not len(mean):
            return mean, cov
        z = self.to_measurement(xyxy)
        r = self._std(mean[:, :4], STD_POSITION, 10.0) ** 2
        s = self.H @ cov @ self.H.T + _diag(r)          # innovation covariance (n, 4, 4)
        pht = cov @ self.H.T                            # (n, 8, 4)
        gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)  # P H^T S^-1 (S symmetric)
        innovation = z - mean[:, :4]
        mean = mean + np.einsum("nij,nj->ni", gain, innovation)
        cov = cov - gain @ s @ gain.transpose(0, 2, 1)
        return mean, cov

    def stop_size_change(self, mean: np.ndarray) -> np.ndarray:
        """A copy of ``mean`` whose size velocities are zero (for tracks not seen in the last frame)."""
        mean = mean.copy()
        mean[:, 6:8] = 0.0
        return mean


class KalmanXYAH(_BoxKalman):
    """ByteTrack's filter: measurement centre x, y, aspect ratio w/h, height."""

    def to_measurement(self, xyxy: np.ndarray) -> np.ndarray:
        z = xyxy_to_xywh(xyxy)
        z[:, 2] = z[:, 2] / np.maximum(z[:, 3], 1e-6)
        return z

    def to_xyxy(self, mean: np.ndarray) -> np.ndarray:
        h = mean[:, 3]
        w = mean[:, 2] * h
        return np.stack((mean[:, 0] - w / 2, mean[:, 1] - h / 2, mean[:, 0] + w / 2, mean[:, 1] + h / 2), 1)

    def _scales(self, z: np.ndarray) -> np.ndarray:
        return np.repeat(z[:, 3:4], 4, 1)

    def _fixed(self) -> tuple[np.ndarray, np.ndarray]:
        # the aspect ratio's noise does not scale with the box: 1e-2 (1e-1 measured, 1e-5 velocity)
        return np.array([False, False, True, False]), np.array([0.0, 0.0, 1e-2, 0.0])

    def stop_size_change(self, mean: np.ndarray) -> np.ndarray:
        mean = mean.copy()
        mean[:, 7] = 0.0  # ByteTrack stops the height's velocity only
        return mean


class KalmanXYWH(_BoxKalman):
    """BoT-SORT's filter: measurement centre x, y, width, height, noise proportional to w and h."""

    def to_measurement(self, xyxy: np.ndarray) -> np.ndarray:
        return xyxy_to_xywh(xyxy)

    def to_xyxy(self, mean: np.ndarray) -> np.ndarray:
        c, wh = mean[:, :2], mean[:, 2:4]
        return np.concatenate((c - wh / 2, c + wh / 2), 1)

    def _scales(self, z: np.ndarray) -> np.ndarray:
        w, h = z[:, 2:3], z[:, 3:4]
        return np.concatenate((w, h, w, h), 1)


def _diag(v: np.ndarray) -> np.ndarray:
    """(n, k) -> (n, k, k) diagonal matrices."""
    out = np.zeros((*v.shape, v.shape[-1]))
    idx = np.arange(v.shape[-1])
    out[:, idx, idx] = v
    return out
