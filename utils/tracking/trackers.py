"""ByteTrack and BoT-SORT (motion and IoU association; no appearance model).

ByteTrack (Zhang et al., 2022) associates *every* detection box: first the confident ones
(score >= ``track_high_thresh``) with all tracks, tracked and recently lost, by IoU; then the
low-score ones (``track_low_thresh`` < score < ``track_high_thresh``) with the tracks still
unmatched, which recovers objects whose score drops while they are occluded or blurred, and
drops low-score boxes that match nothing (mostly background). A new confident detection starts
a tentative track that is confirmed when it is matched again in the next frame (at once in a
sequence's first frame); a track that goes unmatched is kept, lost, for ``track_buffer`` frames
(scaled by frame rate / 30) and can be found again with its ID.

BoT-SORT (Aharon et al., 2022) keeps that scheme and changes the motion model: a Kalman state of
centre, width and height (noise proportional to each) instead of centre, aspect ratio and height,
and camera-motion compensation (``utils.tracking.gmc``) of the predicted states before the
association. BoT-SORT's appearance (ReID) cue is not implemented.

``update(dets, frame)`` takes one frame's detections as an (n, 6) array ``x1, y1, x2, y2, conf,
cls`` in image pixels and returns the confirmed tracks matched in this frame as an (m, 7) array
``x1, y1, x2, y2, conf, cls, id``: each row is the detection the track was matched to (the box
the detector drew, not the filtered one), IDs are consecutive from 1 in the order tracks are
confirmed. A frame without detections ages every track by one frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import numpy as np

from utils.tracking.config import TrackerConfig
from utils.tracking.gmc import CameraMotion
from utils.tracking.kalman import KalmanXYAH, KalmanXYWH, _BoxKalman
from utils.tracking.matching import assign, iou_cost, iou_matrix

SECOND_MATCH_THRESH = 0.5      # cost limit of the low-score association (ByteTrack)
TENTATIVE_MATCH_THRESH = 0.7   # cost limit when confirming tentative tracks
DUPLICATE_IOU = 0.85           # a tracked and a lost track overlapping this much are one object


class State(Enum):
    TENTATIVE = 0
    TRACKED = 1
    LOST = 2
    REMOVED = 3


@dataclass
class Track:
    """One object's filter state and bookkeeping."""
    mean: np.ndarray
    cov: np.ndarray
    score: float
    cls: float
    start_frame: int
    last_frame: int
    state: State = State.TENTATIVE
    track_id: int = 0          # 0 until confirmed
    det_index: int = -1        # row of this frame's detections it matched, -1 when unmatched


def _stack(tracks: list[Track]) -> tuple[np.ndarray, np.ndarray]:
    if not tracks:
        return np.zeros((0, 8)), np.zeros((0, 8, 8))
    return np.stack([t.mean for t in tracks]), np.stack([t.cov for t in tracks])


class ByteTracker:
    """ByteTrack over one sequence; ``BotSortTracker`` differs only in its motion model and GMC."""

    def __init__(self, cfg: TrackerConfig, frame_rate: float = 30.0):
        self.cfg = cfg
        self.kf: _BoxKalman = self._filter()
        rate = frame_rate if frame_rate and np.isfinite(frame_rate) and frame_rate > 0 else 30.0
        self.max_lost = max(1, int(round(rate / 30.0 * cfg.track_buffer)))
        self.frame = 0
        self.next_id = 1
        self.tracks: list[Track] = []   # tentative, tracked and lost, never removed ones

    def _filter(self) -> _BoxKalman:
        return KalmanXYAH()

    @property
    def n_ids(self) -> int:
        """How many track IDs this tracker has given out."""
        return self.next_id - 1

    def reset(self) -> None:
        """Forget every track (IDs keep counting up)."""
        self.tracks, self.frame = [], 0

    # ------------------------------------------------------------------ one frame
    def update(self, dets: np.ndarray, frame: Optional[np.ndarray] = None) -> np.ndarray:
        """Associate one frame's (n, 6) detections; the matched confirmed tracks as (m, 7) rows."""
        dets = np.asarray(dets, np.float64).reshape(-1, 6)
        self.frame += 1
        for t in self.tracks:
            t.det_index = -1
        self._predict(frame, dets)
        high = np.nonzero(dets[:, 4] >= self.cfg.track_high_thresh)[0]
        low = np.nonzero((dets[:, 4] > self.cfg.track_low_thresh) & (dets[:, 4] < self.cfg.track_high_thresh))[0]
        confirmed = [t for t in self.tracks if t.state in (State.TRACKED, State.LOST)]
        tentative = [t for t in self.tracks if t.state == State.TENTATIVE]
        left_tracks, left_high = self._associate(confirmed, dets, high, self.cfg.match_thresh, self.cfg.fuse_score)
        still = [t for t in left_tracks if t.state == State.TRACKED]
        unmatched, _ = self._associate(still, dets, low, SECOND_MATCH_THRESH, False)
        for t in unmatched:
            t.state = State.LOST
        unconfirmed, left_high = self._associate(tentative, dets, left_high, TENTATIVE_MATCH_THRESH,
                                                 self.cfg.fuse_score)
        for t in unconfirmed:
            t.state = State.REMOVED
        self._start_tracks(dets, left_high)
        self._drop_old_and_duplicates()
        return self._output(dets)

    def _predict(self, frame: Optional[np.ndarray], dets: np.ndarray) -> None:
        if not self.tracks:
            return
        mean, cov = _stack(self.tracks)
        moving = np.array([t.state != State.LOST for t in self.tracks])
        mean = np.where(moving[:, None], mean, self.kf.stop_size_change(mean))
        mean, cov = self.kf.predict(mean, cov)
        for t, m, c in zip(self.tracks, mean, cov):
            t.mean, t.cov = m, c

    def _associate(self, tracks: list[Track], dets: np.ndarray, idx: np.ndarray, thresh: float,
                   fuse: bool) -> tuple[list[Track], np.ndarray]:
        """Match ``tracks`` to detections ``idx`` and update the matched; (unmatched tracks, unmatched idx)."""
        if not tracks or not len(idx):
            return list(tracks), idx
        mean, cov = _stack(tracks)
        d = dets[idx]
        cost = iou_cost(self.kf.to_xyxy(mean), d[:, :4], d[:, 4] if fuse else None)
        matches, rows, cols = assign(cost, thresh)
        if len(matches):
            r, c = matches[:, 0], matches[:, 1]
            new_mean, new_cov = self.kf.update(mean[r], cov[r], d[c, :4])
            for k, (i, j) in enumerate(matches):
                self._matched(tracks[i], new_mean[k], new_cov[k], dets, int(idx[j]))
        return [tracks[i] for i in rows], idx[cols]

    def _matched(self, t: Track, mean: np.ndarray, cov: np.ndarray, dets: np.ndarray, j: int) -> None:
        t.mean, t.cov = mean, cov
        t.score, t.cls = float(dets[j, 4]), float(dets[j, 5])
        t.last_frame, t.det_index = self.frame, j
        t.state = State.TRACKED
        if not t.track_id:
            t.track_id, self.next_id = self.next_id, self.next_id + 1

    def _start_tracks(self, dets: np.ndarray, idx: np.ndarray) -> None:
        idx = idx[dets[idx, 4] >= self.cfg.new_track_thresh]
        if not len(idx):
            return
        mean, cov = self.kf.initiate(dets[idx, :4])
        for k, j in enumerate(idx):
            t = Track(mean[k], cov[k], float(dets[j, 4]), float(dets[j, 5]), self.frame, self.frame)
            if self.frame == 1:  # the first frame's tracks are confirmed at once
                self._matched(t, t.mean, t.cov, dets, int(j))
            self.tracks.append(t)

    def _drop_old_and_duplicates(self) -> None:
        for t in self.tracks:
            if t.state == State.LOST and self.frame - t.last_frame > self.max_lost:
                t.state = State.REMOVED
        tracked = [t for t in self.tracks if t.state == State.TRACKED and t.last_frame == self.frame]
        lost = [t for t in self.tracks if t.state == State.LOST]
        if tracked and lost:
            iou = iou_matrix(self.kf.to_xyxy(_stack(tracked)[0]), self.kf.to_xyxy(_stack(lost)[0]))
            for i, j in zip(*np.nonzero(iou > DUPLICATE_IOU)):
                a, b = tracked[i], lost[j]
                # the younger of the two goes
                (b if a.last_frame - a.start_frame >= b.last_frame - b.start_frame else a).state = State.REMOVED
        self.tracks = [t for t in self.tracks if t.state != State.REMOVED]

    def _output(self, dets: np.ndarray) -> np.ndarray:
        rows = [np.append(dets[t.det_index], t.track_id) for t in self.tracks
                if t.state == State.TRACKED and t.track_id and t.det_index >= 0]
        return np.stack(rows) if rows else np.zeros((0, 7))


class BotSortTracker(ByteTracker):
    """BoT-SORT without ReID: width/height Kalman state and camera-motion compensation."""

    def __init__(self, cfg: TrackerConfig, frame_rate: float = 30.0):
        super().__init__(cfg, frame_rate)
        self.gmc = CameraMotion(cfg.gmc_method)

    def _filter(self) -> _BoxKalman:
        return KalmanXYWH()

    def reset(self) -> None:
        super().reset()
        self.gmc.reset()

    def _predict(self, frame: Optional[np.ndarray], dets: np.ndarray) -> None:
        warp = self.gmc.estimate(frame, dets[:, :4])
        super()._predict(frame, dets)
        if self.tracks and not np.allclose(warp, np.eye(2, 3)):
            mean, cov = _stack(self.tracks)
            mean, cov = warp_states(mean, cov, warp)
            for t, m, c in zip(self.tracks, mean, cov):
                t.mean, t.cov = m, c


def warp_states(mean: np.ndarray, cov: np.ndarray, warp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a 2x3 affine to (n, 8) x, y, w, h + velocity states: the linear part rotates and scales each
    (x, y), (w, h), (vx, vy), (vw, vh) pair, the translation moves the centre."""
    r8 = np.kron(np.eye(4), warp[:, :2])
    mean = mean @ r8.T
    mean[:, :2] += warp[:, 2]
    return mean, r8 @ cov @ r8.T


def create_tracker(cfg: TrackerConfig, frame_rate: float = 30.0) -> ByteTracker:
    """The tracker ``cfg.tracker_type`` names, for one sequence at ``frame_rate``."""
    return BotSortTracker(cfg, frame_rate) if cfg.tracker_type == "botsort" else ByteTracker(cfg, frame_rate)
