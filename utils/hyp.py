"""Hyperparameter files: safe yaml, ``base`` inheritance, and a check of every value before training.

:data:`SPECS` is the one table of the rules (range, who reads the key, its evolution bounds); the loader's keys
and ``--evolve``'s table are derived from it. A hyp yaml is a flat mapping of YOLOv7's keys (``lr0``,
``momentum``, ``box``, ``mosaic``, ...) plus this project's ``optimizer``, ``nbs`` and ``loss_ota``. A file may
name ``base: other.yaml`` (relative to its own folder): the base is loaded first and the file's own keys
override it.

Each value is checked for type, finiteness, sign and a sane range when the file is read, so a bad
value ends in one line naming the file and the key, e.g.
``data/hyp.x.yaml: lr0: must be a finite number > 0 and <= 1 (got nan)``, instead of a crash deep
inside torch or a silently diverging run. Unknown keys are reported once per file.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from utils.cli import UserError
from utils.log import LOGGER
from utils.safe_yaml import YamlError, load_yaml

MAX_BASE_DEPTH = 4  # the deepest file of a 'base' chain that may still name a base (6 files at most)
MAX_HYP_BYTES = 1 << 20  # a hyp yaml is a few dozen lines; anything bigger is not one
REQUIRED_KEYS = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr",
                 "box", "cls", "obj", "anchor_t")
OPTIMIZERS = ("SGD", "Adam")
_NUMBER_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")  # '1e-3': PyYAML reads it as a string


class HypError(UserError, ValueError):
    """A hyperparameter file or value that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Spec:
    """What one key accepts and who reads it: ``kind`` 'float' | 'int' | 'flag' | 'choice'; bounds for numbers;
    ``off``: the value that turns a loader augmentation off (set for loader keys only); ``segments_only``: the
    augmentation acts on segment labels (a no-op on boxes, as in YOLOv7); ``evolve``: YOLOv7's ``--evolve``
    (mutation gain, lower bound, upper bound)."""

    kind: str
    lo: float = 0.0
    hi: float = math.inf
    lo_open: bool = False  # lo itself is refused
    hi_open: bool = False  # hi itself is refused
    help: str = ""
    off: Optional[float] = None
    segments_only: bool = False
    evolve: Optional[tuple[float, float, float]] = None


def _f(lo: float, hi: float, help: str, lo_open: bool = False, hi_open: bool = False,
       evolve: Optional[tuple[float, float, float]] = None) -> Spec:
    return Spec("float", lo, hi, lo_open, hi_open, help, evolve=evolve)


def _aug(hi: float, help: str, evolve: tuple[float, float, float], hi_open: bool = False,
         segments_only: bool = False) -> Spec:
    """A loader augmentation: a number from 0 (its "off" value) to ``hi``."""
    return Spec("float", 0.0, hi, False, hi_open, help, off=0.0, segments_only=segments_only, evolve=evolve)


# The one table of hyperparameter rules: every key the project reads (train.py, utils/loss.py, the loader,
# utils/evolve.py), in YOLOv7's order. The ranges are "sane" limits that catch typos and nonsense, wider than
# YOLOv7's evolution bounds (``evolve``). The loader's keys (LOADER_KEYS) and the evolution table (EVOLVE) are
# read from it.
SPECS: dict[str, Spec] = {
    # optimiser and schedule (train.py)
    "lr0": _f(0, 1, "initial learning rate", lo_open=True, evolve=(1, 1e-05, 0.1)),
    "lrf": _f(0, 1, "final learning rate as a fraction of lr0", evolve=(1, 0.01, 1.0)),
    "momentum": _f(0, 1, "SGD momentum / Adam beta1", hi_open=True, evolve=(0.3, 0.6, 0.98)),
    "weight_decay": _f(0, 1, "optimizer weight decay", evolve=(1, 0.0, 0.001)),
    "warmup_epochs": _f(0, 1000, "warmup length in epochs", evolve=(1, 0.0, 5.0)),
    "warmup_momentum": _f(0, 1, "momentum at the start of warmup", hi_open=True, evolve=(1, 0.0, 0.95)),
    "warmup_bias_lr": _f(0, 1, "bias learning rate at the start of warmup", evolve=(1, 0.0, 0.2)),
    "optimizer": Spec("choice", help="SGD or Adam"),
    "nbs": Spec("int", 1, 1 << 16, help="nominal batch size (images per optimizer step)"),
    # loss (utils/loss.py)
    "box": _f(0, 1000, "box loss gain", evolve=(1, 0.02, 0.2)),
    "cls": _f(0, 1000, "class loss gain", evolve=(1, 0.2, 4.0)),
    "cls_pw": _f(0, 1000, "class BCE positive weight", lo_open=True, evolve=(1, 0.5, 2.0)),
    "obj": _f(0, 1000, "objectness loss gain", evolve=(1, 0.2, 4.0)),
    "obj_pw": _f(0, 1000, "objectness BCE positive weight", lo_open=True, evolve=(1, 0.5, 2.0)),
    "iou_t": _f(0, 1, "IoU training threshold", evolve=(0, 0.1, 0.7)),
    "anchor_t": _f(1, 100, "anchor-multiple threshold", evolve=(1, 2.0, 8.0)),
    "anchors": _f(0, 100, "anchors per output layer (0: keep the model's)", evolve=(2, 2.0, 10.0)),
    "fl_gamma": _f(0, 100, "focal loss gamma (0: plain BCE)", evolve=(0, 0.0, 2.0)),
    "label_smoothing": _f(0, 1, "label smoothing epsilon", hi_open=True),
    "loss_ota": Spec("flag", help="1: ComputeLossOTA, 0: plain ComputeLoss"),
    "ota_fixes": Spec("flag", help="1: OTA with one candidate per prediction and width/height box scaling "
                      "(0, default: YOLOv7's assignment as written)"),
    "distill": _f(0, 1000, "distillation loss gain (train.py --teacher; default 1)"),
    # loader augmentations (utils/data/dataset.py, utils/data/augment.py)
    "hsv_h": _aug(1, "HSV hue gain", (1, 0.0, 0.1)),
    "hsv_s": _aug(1, "HSV saturation gain", (1, 0.0, 0.9)),
    "hsv_v": _aug(1, "HSV value gain", (1, 0.0, 0.9)),
    "degrees": _aug(180, "rotation (+/- degrees)", (1, 0.0, 45.0)),
    "translate": _aug(1, "translation (+/- fraction)", (1, 0.0, 0.9)),
    "scale": _aug(1, "scale (+/- gain)", (1, 0.0, 0.9)),
    "shear": _aug(90, "shear (+/- degrees)", (1, 0.0, 10.0), hi_open=True),
    "perspective": _aug(0.1, "perspective (+/- fraction)", (0, 0.0, 0.001)),
    "flipud": _aug(1, "up-down flip probability", (1, 0.0, 1.0)),
    "fliplr": _aug(1, "left-right flip probability", (0, 0.0, 1.0)),
    "mosaic": _aug(1, "mosaic probability", (1, 0.0, 1.0)),
    "mixup": _aug(1, "mixup probability", (1, 0.0, 1.0)),
    "copy_paste": _aug(1, "segment copy-paste probability", (1, 0.0, 1.0), segments_only=True),
    "paste_in": _aug(1, "YOLOv7 paste-in probability", (1, 0.0, 1.0), segments_only=True),
}
KNOWN_KEYS = frozenset(SPECS) | {"base"}
LOADER_KEYS: dict[str, float] = {k: s.off for k, s in SPECS.items() if s.off is not None}  # key -> its "off" value
SEGMENT_ONLY_KEYS = tuple(k for k, s in SPECS.items() if s.segments_only)
EVOLVE: dict[str, tuple[float, float, float]] = {k: s.evolve for k, s in SPECS.items() if s.evolve is not None}
_warned_unknown: set[tuple[str, tuple[str, ...]]] = set()


def _shown(v: Any) -> str:
    """A short description of a bad value (never the repr of a container: it may be huge)."""
    if v is None:
        return "nothing"
    if isinstance(v, (bool, int, float)):
        return "nan" if isinstance(v, float) and math.isnan(v) else repr(v)
    if isinstance(v, str):
        if _NUMBER_TEXT.match(v.strip()):
            return v.strip()
        return repr(v if len(v) <= 40 else v[:40] + "...")
    return f"a {'mapping' if isinstance(v, dict) else 'list' if isinstance(v, list) else type(v).__name__}"


def _range_text(s: Spec) -> str:
    lo = f"{'>' if s.lo_open else '>='} {s.lo:g}"
    return lo if math.isinf(s.hi) else f"{lo} and {'<' if s.hi_open else '<='} {s.hi:g}"


def _in_range(x: float, s: Spec) -> bool:
    lo_ok = x > s.lo if s.lo_open else x >= s.lo
    hi_ok = x < s.hi if s.hi_open else x <= s.hi
    return math.isfinite(x) and lo_ok and hi_ok


def _as_number(v: Any) -> Optional[float]:
    """``v`` as a float when it is a number (or number text such as '1e-3'), else None; bools are not numbers."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and _NUMBER_TEXT.match(v.strip()):
        return float(v)
    return None


def check_value(key: str, value: Any, source: str = "hyp") -> Any:
    """The validated value of one known key (number text becomes a float); :class:`HypError` if bad."""
    s = SPECS[key]
    where = f"{source}: {key}"
    if s.kind == "choice":
        match = [o for o in OPTIMIZERS if isinstance(value, str) and value.lower() == o.lower()]
        if not match:
            raise HypError(f"{where}: must be one of {', '.join(OPTIMIZERS)} (got {_shown(value)})")
        return value
    if s.kind == "flag":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return value
        raise HypError(f"{where}: must be 0 or 1 (got {_shown(value)})")
    x = _as_number(value)
    if s.kind == "int":
        if x is None or not math.isfinite(x) or x != int(x) or not _in_range(x, s):
            raise HypError(f"{where}: must be an integer {_range_text(s)} (got {_shown(value)})")
        return int(x)
    if x is None or not _in_range(x, s):
        raise HypError(f"{where}: must be a finite number {_range_text(s)} (got {_shown(value)})")
    return x if isinstance(value, str) else value


def validate_hyp(hyp: dict, source: str = "hyp", required: bool = False, warn_unknown: bool = True) -> dict:
    """Check every known key of ``hyp`` (and that the required ones are there); return a checked copy.

    Unknown keys are kept and reported once per ``source`` (they may belong to a newer version).
    """
    if not isinstance(hyp, dict):
        raise HypError(f"{source}: expected a mapping of hyperparameters (key: value), got {_shown(hyp)}")
    out = {}
    for k, v in hyp.items():
        out[k] = check_value(k, v, source) if k in SPECS else v
    if required:
        missing = [k for k in REQUIRED_KEYS if k not in out]
        if missing:
            raise HypError(f"{source}: missing hyperparameter{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(repr(k) for k in missing)}")
    unknown = tuple(str(k) for k in out if k not in KNOWN_KEYS)
    if unknown and warn_unknown and (source, unknown) not in _warned_unknown:
        _warned_unknown.add((source, unknown))
        LOGGER.warning(f"WARNING: {source}: unknown hyp key{'s' if len(unknown) > 1 else ''} "
                       f"{', '.join(unknown)} (not used by this project)")
    return out


def _read_yaml(path: Path) -> dict:
    """One hyp yaml as a dict, read by the project's one safe yaml reader; HypError naming the file."""
    try:
        d = load_yaml(path, "hyp file", mapping=False, max_bytes=MAX_HYP_BYTES)
    except FileNotFoundError:
        raise HypError(f"{path}: hyp file not found") from None
    except YamlError as e:
        raise HypError(str(e)) from None
    if not isinstance(d, dict):
        raise HypError(f"{path}: expected a mapping of hyperparameters (key: value), got {_shown(d)}")
    return d


def _load_file(path: Path, chain: tuple[Path, ...]) -> dict:
    """A hyp file merged over its ``base`` chain; every file's own keys are checked under its own name."""
    d = _read_yaml(path)
    base = d.pop("base", None)
    d = validate_hyp(d, str(path))
    if base in (None, ""):
        return d
    if not isinstance(base, str):
        raise HypError(f"{path}: base: must be the name of another hyp yaml (got {_shown(base)})")
    base_path = path.parent / base
    seen = [p.resolve() for p in chain + (path,)]
    if base_path.resolve() in seen:
        names = " -> ".join(p.name for p in chain + (path, base_path))
        raise HypError(f"{path}: base: 'base' chain too deep: it is a cycle ({names})")
    if len(chain) > MAX_BASE_DEPTH:
        raise HypError(f"{path}: base: 'base' chain too deep (at most {MAX_BASE_DEPTH + 2} files)")
    return {**_load_file(base_path, chain + (path,)), **d}


def load_hyp(hyp: Union[str, Path, dict], source: str = "hyp") -> dict:
    """Hyperparameters from a yaml file (safe loader, ``base`` inheritance) or a dict, validated.

    ``source`` names a dict's origin in messages (e.g. ``"runs/train/exp/weights/last.pt: hyp"``).
    Raises :class:`HypError` (a :class:`utils.cli.UserError` and a ``ValueError``) naming the file
    and the key.
    """
    if isinstance(hyp, dict):
        return validate_hyp(dict(hyp), source, required=True)
    path = Path(hyp)
    d = _load_file(path, ())
    return validate_hyp(d, str(path), required=True, warn_unknown=False)


__all__ = ["EVOLVE", "HypError", "KNOWN_KEYS", "LOADER_KEYS", "REQUIRED_KEYS", "SEGMENT_ONLY_KEYS", "SPECS",
           "check_value", "load_hyp", "validate_hyp"]
