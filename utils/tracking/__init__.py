"""Multi-object tracking by detection: ByteTrack and BoT-SORT (motion + IoU association), MOT files.

    from utils.tracking import create_tracker, load_tracker_config
    tracker = create_tracker(load_tracker_config("bytetrack"), frame_rate=30)
    for frame, dets in video:                 # dets (n, 6): x1, y1, x2, y2, conf, cls in pixels
        tracks = tracker.update(dets, frame)  # (m, 7): x1, y1, x2, y2, conf, cls, id

Modules: ``config`` (tracker yamls), ``kalman`` (box Kalman filters), ``matching`` (IoU costs and
assignment), ``gmc`` (camera-motion compensation), ``trackers`` (ByteTrack, BoT-SORT), ``session``
(one tracker per sequence), ``mot`` (MOTChallenge files). Nothing here imports ``models``.
"""
from utils.tracking.config import TrackerConfig, load_tracker_config, tracker_names
from utils.tracking.mot import MotFiles, mot_rows, read_mot
from utils.tracking.session import TrackSession
from utils.tracking.trackers import BotSortTracker, ByteTracker, create_tracker

__all__ = ["TrackerConfig", "load_tracker_config", "tracker_names", "MotFiles", "mot_rows", "read_mot",
           "TrackSession", "BotSortTracker", "ByteTracker", "create_tracker"]
