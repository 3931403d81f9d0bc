"""Label files and their statistics: one image + label check (every line named when it is wrong, boxes a
little outside the image clipped), and the class / image weights of ``--image-weights``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from utils.data.files import IMG_FORMATS, PIL_FORMATS, ImageReadError, _regular_file, check_image_size, read_image

# --------------------------------------------------------------------------- inference sources
from utils.data.sources import LoadImages, LoadStreams  # noqa: F401,E402

BOX_TOLERANCE = 0.02  # box corners up to 2 % outside [0, 1] are clipped; further out is rejected
FLOAT_NOISE = 1e-6  # overshoot below this is float rounding: clipped without a message
MIN_IMAGE_SIZE = 10  # px
MAX_LABEL_BYTES = 16 << 20  # ~400k boxes; a bigger .txt beside an image is not a label file


def _check_image(im_file: str) -> tuple[Optional[tuple[int, int]], list[str], Optional[str]]:
    """Return ((w, h) or None, notes, error or None) for one image file.

    An image passes only if the training reader (:func:`read_image`) decodes it, so what the
    checker accepts, training can read.
    """
    notes: list[str] = []
    ext = Path(im_file).suffix[1:].lower()
    if ext not in IMG_FORMATS:
        return None, notes, f"{im_file}: unsupported image format '.{ext}'"
    try:
        check_image_size(im_file)
        with Image.open(im_file) as im:
            im.verify()
        with Image.open(im_file) as im:
            fmt = (im.format or "").lower()
    except ImageReadError as e:
        return None, notes, str(e)
    except UnidentifiedImageError:
        return None, notes, f"{im_file}: not an image (cannot identify the format)"
    except Exception as e:  # truncated / corrupt files raise OSError, SyntaxError, ValueError ...
        return None, notes, f"{im_file}: unreadable or corrupt image ({type(e).__name__}: {e})"
    if fmt not in PIL_FORMATS:
        return None, notes, f"{im_file}: unsupported image format '{fmt}'"
    if fmt in ("jpeg", "mpo"):
        err = _check_jpeg_end(im_file, notes)
        if err:
            return None, notes, err
    try:
        decoded = read_image(im_file, checked=True)
    except ImageReadError as e:
        return None, notes, str(e)
    shape = (decoded.shape[1], decoded.shape[0])  # (w, h) as training sees it
    if shape[0] < MIN_IMAGE_SIZE or shape[1] < MIN_IMAGE_SIZE:
        return None, notes, f"{im_file}: image size {shape[0]}x{shape[1]} is below {MIN_IMAGE_SIZE} px"
    return shape, notes, None


def _check_jpeg_end(im_file: str, notes: list[str]) -> Optional[str]:
    """An error for a truncated JPEG (OpenCV would grey-fill it silently); a note for trailing data."""
    with open(im_file, "rb") as f:
        f.seek(-2, 2)
        tail = f.read()
    if tail == b"\xff\xd9":
        return None
    try:  # no end-of-image marker: decode fully to tell padding from truncation
        with Image.open(im_file) as im:
            im.load()
    except Exception as e:
        return f"{im_file}: truncated JPEG ({type(e).__name__}: {e})"
    notes.append(f"{im_file}: JPEG has data after its end-of-image marker; decodes fully, kept")
    return None


def _check_labels(lb_file: str, nc: Optional[int]) -> tuple[str, np.ndarray, list[str], list[str]]:
    """Parse and check one label file.

    Returns ``(status, labels (n, 5) float32, errors, fixes)``; status is one of
    'missing', 'empty', 'found', 'corrupt'. Any error makes the file corrupt (its image is
    excluded: training on an image with an unusable label would teach it background).
    """
    empty = np.zeros((0, 5), dtype=np.float32)
    st, why = _regular_file(Path(lb_file))
    if st is None and why.startswith("does not exist"):
        return "missing", empty, [], []
    if st is None:  # a folder or a named pipe where the label should be: never opened
        return "corrupt", empty, [f"{lb_file}: label file {why}"], []
    if st.st_size > MAX_LABEL_BYTES:
        return "corrupt", empty, [f"{lb_file}: {st.st_size} bytes is too large for a label file "
                                  f"(limit {MAX_LABEL_BYTES})"], []
    try:
        with open(lb_file, encoding="utf-8-sig") as f:  # tolerate a byte-order mark
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return "corrupt", empty, [f"{lb_file}: unreadable label file ({type(e).__name__}: {e})"], []
    rows, line_nos, errors, fixes = [], [], [], []
    for ln, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{lb_file}:{ln}"
        if len(parts) != 5:
            hint = ""
            if len(parts) >= 7 and len(parts) % 2 == 1:
                hint = " (looks like a polygon/segment label: convert it to a box)"
            errors.append(f"{where}: expected 5 columns (class cx cy w h), got {len(parts)}{hint}")
            continue
        try:
            vals = [float(x) for x in parts]
        except ValueError:
            errors.append(f"{where}: non-numeric value in '{line.strip()}'")
            continue
        if not all(math.isfinite(v) for v in vals):
            errors.append(f"{where}: non-finite value (NaN or inf) in '{line.strip()}'")
            continue
        c, cx, cy, w, h = vals
        if c < 0 or not c.is_integer():
            errors.append(f"{where}: class {parts[0]} is not a non-negative integer")
            continue
        if nc is not None and c >= nc:
            errors.append(f"{where}: class {int(c)} out of range [0, {nc})")
            continue
        if w <= 0 or h <= 0:
            errors.append(f"{where}: width and height must be positive, got w={w:g} h={h:g}")
            continue
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        over = max(-x1, -y1, x2 - 1, y2 - 1, 0.0)
        if over > BOX_TOLERANCE:
            errors.append(f"{where}: box outside the image (x {x1:.4g}..{x2:.4g}, y {y1:.4g}..{y2:.4g}; "
                          f"more than {BOX_TOLERANCE:g} beyond [0, 1])")
            continue
        if over > 0:
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
            if x2 <= x1 or y2 <= y1:
                errors.append(f"{where}: box has no area inside the image")
                continue
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            if over > FLOAT_NOISE:
                fixes.append(f"{where}: box overshoots the image by {over:.3g}: clipped to [0, 1]")
        rows.append((c, cx, cy, w, h))
        line_nos.append(ln)
    if errors:
        return "corrupt", empty, errors, fixes
    if not rows:
        return "empty", empty, [], fixes
    seen: dict[tuple, int] = {}
    keep = []
    for row, ln in zip(rows, line_nos):
        if row in seen:
            fixes.append(f"{lb_file}:{ln}: duplicate of line {seen[row]}: removed")
        else:
            seen[row] = ln
            keep.append(row)
    return "found", np.array(keep, dtype=np.float32).reshape(-1, 5), [], fixes


def verify_image_label(args: tuple[str, str, Optional[int]]) -> dict:
    """Check one (image, label) pair; a dict with status, shape (w, h), labels and messages."""
    im_file, lb_file, nc = args
    shape, notes, err = _check_image(im_file)
    if err:
        return {"status": "corrupt", "shape": (0, 0), "labels": np.zeros((0, 5), np.float32),
                "errors": [err], "fixes": []}
    status, labels, errors, fixes = _check_labels(lb_file, nc)
    return {"status": status, "shape": shape, "labels": labels, "errors": errors, "fixes": notes + fixes}


def labels_to_class_weights(labels: Sequence[np.ndarray], nc: int = 80) -> torch.Tensor:
    """Inverse-frequency class weights from a list of (n, 5) label arrays [cls, x, y, w, h]."""
    if not len(labels) or labels[0] is None:
        return torch.Tensor()
    classes = np.concatenate(labels, 0)[:, 0].astype(int)
    weights = np.bincount(classes, minlength=nc).astype(np.float64)
    weights[weights == 0] = 1
    weights = 1 / weights
    weights /= weights.sum()
    return torch.from_numpy(weights).float()


def labels_to_image_weights(labels: Sequence[np.ndarray], nc: int = 80,
                            class_weights: Union[np.ndarray, torch.Tensor, None] = None) -> np.ndarray:
    """Sampling weight per image (YOLOv7's ``--image-weights``): sum over its labels of their class weight.

    ``labels``: per image (n, 5) arrays [cls, ...]; ``class_weights``: (nc,) weights (default 1 each).
    An image without labels weighs 0. Use with ``random.choices(range(n), weights=w, k=n)``.
    """
    cw = np.ones(nc) if class_weights is None else np.asarray(
        class_weights.detach().cpu() if torch.is_tensor(class_weights) else class_weights, dtype=np.float64)
    if cw.shape != (nc,):
        raise ValueError(f"class_weights must hold nc={nc} values, got shape {tuple(cw.shape)}")
    counts = np.zeros((len(labels), nc))
    for i, lb in enumerate(labels):
        lb = np.asarray(lb)
        cls = lb.reshape(-1, lb.shape[-1])[:, 0].astype(int) if lb.size else np.zeros(0, int)
        if cls.size and (cls.min() < 0 or cls.max() >= nc):
            raise ValueError(f"image {i}: label class {int(cls.max() if cls.max() >= nc else cls.min())} "
                             f"outside 0-{nc - 1}")
        counts[i] = np.bincount(cls, minlength=nc)
    return (counts * cw.reshape(1, nc)).sum(1)
