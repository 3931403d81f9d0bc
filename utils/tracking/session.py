"""The trackers of one run: one per sequence (a video file, a stream, a folder of frames).

``TrackSession(cfg).step(key, frame_no, dets, frame, fps)`` runs the sequence ``key``'s tracker
on one frame, making the tracker on the sequence's first frame. ``frame_no`` (from 1) says where
the frame lies in its sequence: frames that were dropped before it (an unreadable image in a
folder of frames) age the tracks as empty frames do, so motion and the lost-track buffer keep
counting real time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from utils.tracking.config import TrackerConfig
from utils.tracking.trackers import ByteTracker, create_tracker

_EMPTY = np.zeros((0, 6))


@dataclass
class _Sequence:
    tracker: ByteTracker
    frame_no: int = 0


class TrackSession:
    """Trackers by sequence key, and how many track IDs each has given out."""

    def __init__(self, cfg: TrackerConfig):
        self.cfg = cfg
        self._seqs: dict[str, _Sequence] = {}

    def step(self, key: str, frame_no: Optional[int], dets: np.ndarray, frame: Optional[np.ndarray] = None,
             fps: float = 30.0) -> tuple[int, np.ndarray]:
        """(the frame's number in its sequence, its tracks (m, 7) ``x1, y1, x2, y2, conf, cls, id``)."""
        seq = self._seqs.get(key)
        if seq is None:
            seq = self._seqs[key] = _Sequence(create_tracker(self.cfg, fps))
        frame_no = seq.frame_no + 1 if frame_no is None or frame_no <= seq.frame_no else int(frame_no)
        for _ in range(min(frame_no - seq.frame_no - 1, seq.tracker.max_lost + 1)):
            seq.tracker.update(_EMPTY, None)  # dropped frames age the tracks
        seq.frame_no = frame_no
        return frame_no, seq.tracker.update(dets, frame)

    def counts(self) -> dict[str, int]:
        """Track IDs given out per sequence."""
        return {k: s.tracker.n_ids for k, s in self._seqs.items()}
