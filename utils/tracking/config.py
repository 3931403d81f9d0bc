"""Tracker settings: the built-in ``cfg/trackers/*.yaml`` or a user's yaml, validated key by key.

A tracker yaml names its ``tracker_type`` (``bytetrack`` or ``botsort``) and any of the settings
below; a key it leaves out takes the built-in value for that tracker type. Every value is
checked, and a wrong one is refused with one line naming the file and the key.

| key | meaning |
|---|---|
| ``track_high_thresh`` | detections at or above this score take part in the first association |
| ``track_low_thresh`` | detections above this (and below the high threshold) in the second one |
| ``new_track_thresh`` | an unmatched detection at or above this score starts a track |
| ``track_buffer`` | frames (at 30 FPS; scaled by the video's rate) a lost track is kept |
| ``match_thresh`` | the first association's largest cost (1 - IoU) for a match |
| ``fuse_score`` | weigh the first association's IoU by the detection score |
| ``gmc_method`` | BoT-SORT's camera-motion compensation: ``sparseOptFlow``, ``ecc`` or ``none`` |
| ``proximity_thresh``, ``appearance_thresh`` | BoT-SORT's ReID gates: accepted, unused without ReID |
| ``with_reid`` | must be false: appearance features are not implemented |
| ``model`` | the ReID model of other BoT-SORT yamls: accepted and unused |
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Union

from utils.cli import UserError
from utils.safe_yaml import load_yaml
from utils.tracking.gmc import METHODS

TRACKER_DIR = Path(__file__).resolve().parents[2] / "cfg" / "trackers"
TRACKER_TYPES = ("bytetrack", "botsort")
_BOTSORT_ONLY = {"gmc_method", "proximity_thresh", "appearance_thresh", "with_reid", "model"}


@dataclass(frozen=True)
class TrackerConfig:
    """Validated settings of one tracker (see the module docstring for each key)."""
    tracker_type: str = "bytetrack"
    track_high_thresh: float = 0.5
    track_low_thresh: float = 0.1
    new_track_thresh: float = 0.6
    track_buffer: int = 30
    match_thresh: float = 0.8
    fuse_score: bool = True
    gmc_method: str = "sparseOptFlow"
    proximity_thresh: float = 0.5
    appearance_thresh: float = 0.25
    with_reid: bool = False
    model: Any = None
    source: str = "built-in"


def tracker_names() -> list[str]:
    """The built-in tracker names (yaml files in ``cfg/trackers``)."""
    return sorted(p.stem for p in TRACKER_DIR.glob("*.yaml"))


def resolve_tracker(spec: Union[str, Path]) -> Path:
    """The yaml file of a tracker name (``bytetrack``, ``botsort``) or of a path to one."""
    s = str(spec)
    if s in tracker_names():
        return TRACKER_DIR / f"{s}.yaml"
    p = Path(s).expanduser()
    if p.suffix.lower() in (".yaml", ".yml") or p.exists():
        return p
    raise UserError(f"--track {s}: not a tracker ({', '.join(tracker_names())}) nor a tracker yaml file")


def _number(v: Any, where: str, lo: float = 0.0, hi: float = 1.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise UserError(f"{where}: {v!r}: must be a number in [{lo:g}, {hi:g}]")
    return float(v)


def _check(key: str, v: Any, where: str) -> Any:
    """The validated value of one key."""
    if key == "tracker_type":
        if v not in TRACKER_TYPES:
            raise UserError(f"{where}: {v!r}: must be one of {', '.join(TRACKER_TYPES)}")
        return v
    if key == "track_buffer":
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100_000:
            raise UserError(f"{where}: {v!r}: must be a whole number of frames in [1, 100000]")
        return v
    if key in ("fuse_score", "with_reid"):
        if not isinstance(v, bool):
            raise UserError(f"{where}: {v!r}: must be true or false")
        if key == "with_reid" and v:
            raise UserError(f"{where}: true: ReID (appearance features) is not available here; set it to false")
        return v
    if key == "gmc_method":
        if v not in METHODS:
            raise UserError(f"{where}: {v!r}: must be one of {', '.join(METHODS)}")
        return v
    if key == "model":
        return v
    return _number(v, where)


def parse_tracker_config(d: dict, where: str) -> TrackerConfig:
    """A :class:`TrackerConfig` from a mapping read from ``where`` (named in every error)."""
    known = {f.name for f in fields(TrackerConfig)} - {"source"}
    unknown = sorted(set(d) - known, key=str)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(sorted(known))})")
    if "tracker_type" not in d:
        raise UserError(f"{where}: tracker_type: missing (one of {', '.join(TRACKER_TYPES)})")
    kind = _check("tracker_type", d["tracker_type"], f"{where}: tracker_type")
    if kind == "bytetrack":
        extra = sorted(set(d) & _BOTSORT_ONLY)
        if extra:
            raise UserError(f"{where}: {extra[0]}: a botsort setting; tracker_type is bytetrack")
    values = {k: _check(k, v, f"{where}: {k}") for k, v in d.items()}
    cfg = replace(TrackerConfig(), **values, source=where)
    if cfg.track_low_thresh > cfg.track_high_thresh:
        raise UserError(f"{where}: track_low_thresh {cfg.track_low_thresh:g}: must not exceed "
                        f"track_high_thresh {cfg.track_high_thresh:g}")
    return cfg


def load_tracker_config(spec: Union[str, Path, TrackerConfig]) -> TrackerConfig:
    """Settings of a tracker name, a tracker yaml path, or a :class:`TrackerConfig` (returned as it is)."""
    if isinstance(spec, TrackerConfig):
        return spec
    path = resolve_tracker(spec)
    try:
        d = load_yaml(path, what="tracker yaml")
    except FileNotFoundError as e:
        raise UserError(f"--track {spec}: {e}") from None
    return parse_tracker_config(d, str(path))
