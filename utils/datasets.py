"""YOLO-format datasets: verification, label cache, augmenting loader, inference sources.

- ``scan_dataset`` lists the images of a split, finds their labels by the YOLOv7 rule
  (``/images/`` -> ``/labels/``, extension -> ``.txt``), verifies every image and label line in
  parallel and returns a ``DatasetReport`` (counts plus one ``path[:line]: reason`` message per
  corrupt, fixed or missing-label file). Results are cached in a ``.cache`` file keyed by a
  hash of the image and label paths, sizes and mtimes (beside the labels when that folder is
  writable, else under ``$MOYOLO_CACHE_DIR`` or ``~/.cache/moyolo``).
- ``read_image`` is the one image reader (the checker decodes with it too, so what the check
  accepts, training can read) and ``check_image_size`` its header-only decompression-bomb guard
  (``MAX_IMAGE_PIXELS``). Image folders are walked once per real folder (symlink loops end) and
  only regular files are opened (a named pipe is reported, never read).
- ``LoadImagesAndLabels`` / ``create_dataloader``: training and evaluation batches
  ``(imgs uint8 (B,3,H,W) RGB, targets (N,6) [img_idx, cls, cx, cy, w, h], paths, shapes)``.
- ``LoadImages`` / ``LoadStreams``: images, folders, globs, videos, webcams and stream URLs.
- ``python -m utils.datasets --data my.yaml [--img-size 640]``: check a dataset without
  training; exit 0 when every split has usable images, else 1.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import math
import os
import random
import stat
import sys
import time
from dataclasses import dataclass, field
from itertools import repeat
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, distributed
from tqdm import tqdm

from utils.atomic import atomic_write
from utils.augmentations import augment_hsv, check_hyp, flip_labels, letterbox, mixup, random_perspective
from utils.cli import one_line, run_cli
from utils.distributed import torch_distributed_zero_first
from utils.general import LOGGER, xywhn2xyxy, xyxy2xywhn

IMG_FORMATS = ("bmp", "jpg", "jpeg", "png", "tif", "tiff", "webp", "mpo")  # what both PIL and OpenCV decode
VID_FORMATS = ("mov", "avi", "mp4", "mpg", "mpeg", "m4v", "wmv", "mkv")
PIL_FORMATS = {"bmp", "jpeg", "png", "tiff", "webp", "mpo"}  # PIL's Image.format, lower case
NUM_THREADS = min(8, max(1, (os.cpu_count() or 1)))
CACHE_VERSION = 2  # 2: images verified by decoding with the training reader (older caches are rebuilt)
BOX_TOLERANCE = 0.02  # box corners up to 2 % outside [0, 1] are clipped; further out is rejected
FLOAT_NOISE = 1e-6  # overshoot below this is float rounding: clipped without a message
MIN_IMAGE_SIZE = 10  # px
MAX_LABEL_BYTES = 16 << 20  # ~400k boxes; a bigger .txt beside an image is not a label file
MAX_IMAGE_PIXELS = 178_956_970  # PIL's decompression-bomb error limit: 20000x20000 (400 Mpx) is refused
PathArg = Union[str, Path, Sequence[Union[str, Path]]]

__all__ = ["IMG_FORMATS", "VID_FORMATS", "img2label_paths", "letterbox", "scan_dataset", "DatasetReport",
           "LoadImagesAndLabels", "create_dataloader", "collate_fn", "LoadImages", "LoadStreams",
           "NoUsableImagesError", "exif_size", "user_cache_dir", "is_writable_dir", "MAX_IMAGE_PIXELS",
           "check_image_size", "read_image", "ImageReadError"]


# --------------------------------------------------------------------------- paths
def img2label_paths(img_paths: Sequence[str]) -> list[str]:
    """YOLOv7 rule: the last ``/images/`` becomes ``/labels/`` and the extension ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(x.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for x in img_paths]


def user_cache_dir() -> Path:
    """Per-user cache folder for label caches and .npy images of read-only datasets."""
    env = os.environ.get("MOYOLO_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "moyolo"


def is_writable_dir(d: Union[str, Path]) -> bool:
    """True when we may write into folder ``d``.

    Root passes ``os.access`` everywhere, so the permission bits are honoured as well: a
    folder with no write bit (e.g. a shared, read-only dataset) is treated as read-only.
    """
    d = Path(d)
    try:
        if not d.is_dir() or not os.access(d, os.W_OK):
            return False
        return bool(d.stat().st_mode & 0o222)
    except OSError:
        return False


def _fallback_path(path: Path) -> Path:
    """Where a file meant for ``path`` goes when its folder is read-only (unique per source path)."""
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    return user_cache_dir() / f"{path.stem}-{key}{path.suffix}"


def _folder_entries(root: Path, skipped: list[str]) -> list[Path]:
    """Files named ``*.*`` under ``root`` (hidden names excluded), each folder visited once.

    Symlinked folders are followed, but a folder already seen (same device and inode, e.g.
    ``loop -> .`` or ``up -> ../train``) is not entered again, so a link loop cannot make the
    walk endless.
    """
    seen_dirs: set[tuple[int, int]] = set()
    found: list[Path] = []

    def onerror(e: OSError) -> None:
        skipped.append(f"{e.filename}: cannot list folder ({e.strerror or e})")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".") and "." in f[1:]]
    return sorted(found, key=str)


def _regular_file(fp: Path) -> tuple[Optional[os.stat_result], str]:
    """(stat, '') for a regular file (links followed), else (None, why not): only those are read."""
    try:
        st = os.stat(fp)
    except FileNotFoundError:
        return None, "does not exist" + (" (broken link)" if fp.is_symlink() else "")
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a named pipe" if stat.S_ISFIFO(st.st_mode) \
            else "a device or socket"
        return None, f"is not a regular file ({kind})"
    return st, ""


def _list_folder(p: Path, seen: set, images: list[str], skipped: list[str]) -> None:
    """Append the images of folder ``p`` (each real file once) and report the other files."""
    for fp in _folder_entries(p, skipped):
        ext = fp.suffix[1:].lower()
        if ext in ("cache", "npy"):  # this loader's own caches
            continue
        st, why = _regular_file(fp)
        if st is None:
            skipped.append(f"{fp}: {why}")
            continue
        if ext not in IMG_FORMATS:
            skipped.append(f"{fp}: not a supported image format '.{ext}' (supported: {', '.join(IMG_FORMATS)})")
            continue
        if (st.st_dev, st.st_ino) in seen:  # the same file reached through a link
            continue
        seen.add((st.st_dev, st.st_ino))
        images.append(str(fp.resolve()))


def _list_txt(p: Path, images: list[str], problems: list[str]) -> None:
    """Append the images listed in ``p`` (one path per line, relative to the list's folder)."""
    parent = p.resolve().parent
    with open(p, errors="replace") as fh:
        for ln, line in enumerate(fh.read().splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            fp = Path(s).expanduser()
            fp = fp if fp.is_absolute() else parent / fp
            ext = fp.suffix[1:].lower()
            st, why = _regular_file(fp)
            if ext not in IMG_FORMATS:
                problems.append(f"{p}:{ln}: unsupported image format '.{ext}' ({s})")
            elif st is None and why.startswith("does not exist"):
                problems.append(f"{p}:{ln}: listed image does not exist ({s})")
            elif st is None:
                problems.append(f"{p}:{ln}: listed image {why} ({s})")
            else:
                images.append(str(fp.resolve()))


def list_image_files(path: PathArg, prefix: str = "") -> tuple[list[str], list[str], list[str]]:
    """Image files of a split: a folder (recursive), a .txt list of paths, an image, or a list of these.

    Returns ``(images, problems, skipped)``: ``problems`` are listed entries that cannot be
    used (unsupported extension, file missing or not a regular file); ``skipped`` are other
    files found in an image folder (not images, named pipes, broken links). Both are
    reported, so that nothing disappears silently. Only regular files are ever opened, and a
    file reached through several links counts once (a list may repeat a line on purpose).
    """
    images: list[str] = []
    problems: list[str] = []
    skipped: list[str] = []
    seen: set[tuple[int, int]] = set()
    for p in (path if isinstance(path, (list, tuple)) else [path]):
        p = Path(p).expanduser()
        st, why = _regular_file(p)
        if p.is_dir():
            _list_folder(p, seen, images, skipped)
        elif st is not None and p.suffix[1:].lower() in IMG_FORMATS:
            images.append(str(p.resolve()))
        elif st is not None:
            _list_txt(p, images, problems)
        elif why.startswith("does not exist"):
            raise FileNotFoundError(f"{prefix}{p} does not exist")
        else:
            raise FileNotFoundError(f"{prefix}{p} is not an image folder or a .txt list: it {why}")
    return images, problems, skipped


# --------------------------------------------------------------------------- verification
class ImageReadError(ValueError):
    """An image file that cannot be used (not a regular file, too large, undecodable); names the file."""


def check_image_size(path: Union[str, Path], max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(w, h) of an image from its header only, refusing files over ``max_pixels`` before any decode.

    The decompression-bomb guard of every image read (training, evaluation, the checker;
    detection should call it too): a small file cannot make a reader allocate gigabytes.
    Also refuses anything that is not a regular file (a named pipe would block the reader).
    """
    st, why = _regular_file(Path(path))
    if st is None:
        raise ImageReadError(f"{path}: {why}")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: refused: image too large ({e})") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image (cannot identify the format)") from None
    except Exception as e:  # truncated headers raise OSError, SyntaxError, ValueError ...
        raise ImageReadError(f"{path}: unreadable or corrupt image ({type(e).__name__}: {e})") from None
    if w * h > max_pixels:
        raise ImageReadError(f"{path}: refused: {w}x{h} = {w * h / 1e6:.0f} megapixels is over the "
                             f"{max_pixels / 1e6:.0f}-megapixel limit (decompression-bomb guard)")
    return w, h


def read_image(path: Union[str, Path], checked: bool = False) -> np.ndarray:
    """The one image reader of training and evaluation: BGR uint8 (h, w, 3), EXIF orientation applied.

    Runs :func:`check_image_size` first unless ``checked``; raises :class:`ImageReadError`
    when OpenCV cannot decode the file (e.g. float32 TIFF, 32-bit samples) or gives
    something other than an 8-bit, 3-channel image.
    """
    if not checked:
        check_image_size(path)
    im = cv2.imread(str(path))  # BGR; applies EXIF orientation; grey/alpha -> 3 channels
    if im is None:
        raise ImageReadError(f"{path}: OpenCV cannot decode this image (unsupported pixel type such as "
                             f"float or 32-bit samples, or corrupt data)")
    if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
        raise ImageReadError(f"{path}: decoded as {im.dtype} with shape {im.shape}, expected 8-bit 3-channel")
    return im


def exif_size(img: Image.Image) -> tuple[int, int]:
    """(w, h) of a PIL image after its EXIF orientation is applied (90/270-degree turns swap)."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF: use the stored size
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


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


@dataclass
class DatasetReport:
    """What a scan found: counts and one message per corrupt, fixed or missing-label file."""
    prefix: str = ""
    total: int = 0  # images listed
    found: int = 0  # label file with boxes
    missing: int = 0  # no label file (kept as background)
    empty: int = 0  # empty label file (kept as background)
    corrupt: int = 0  # image or label unusable: excluded
    fixed: int = 0  # kept after clipping boxes / removing duplicate rows
    corrupt_msgs: list[str] = field(default_factory=list)
    fixed_msgs: list[str] = field(default_factory=list)
    missing_msgs: list[str] = field(default_factory=list)
    skipped_msgs: list[str] = field(default_factory=list)  # non-image files in an image folder (not counted)
    cache_file: Optional[str] = None
    from_cache: bool = False

    @property
    def usable(self) -> int:
        """Images kept for training/evaluation."""
        return self.found + self.missing + self.empty

    def summary(self) -> str:
        src = f" (cache {self.cache_file})" if self.from_cache else ""
        skip = f", {len(self.skipped_msgs)} other files skipped" if self.skipped_msgs else ""
        return (f"{self.prefix}{self.total} images: {self.found} found, {self.missing} missing, "
                f"{self.empty} empty, {self.corrupt} corrupt, {self.fixed} fixed{skip}{src}")

    def lines(self) -> list[str]:
        """Every per-file message: corrupt first, then fixed, missing labels, skipped files."""
        return ([f"corrupt: {m}" for m in self.corrupt_msgs] + [f"fixed: {m}" for m in self.fixed_msgs]
                + [f"missing label: {m}" for m in self.missing_msgs]
                + [f"skipped: {m}" for m in self.skipped_msgs])


class NoUsableImagesError(RuntimeError):
    """A split whose images are all corrupt (or that has none); carries the report."""

    def __init__(self, msg: str, report: DatasetReport):
        super().__init__(msg)
        self.report = report


@dataclass
class ScanResult:
    img_files: list[str]
    label_files: list[str]
    labels: list[np.ndarray]
    shapes: np.ndarray  # (n, 2) w, h
    report: DatasetReport


def _files_hash(files: Sequence[str], nc: Optional[int]) -> str:
    """Hash of paths, sizes and mtimes (missing files hash as missing) plus nc and cache version."""
    h = hashlib.sha256(f"v{CACHE_VERSION} nc={nc}".encode())
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\0missing\n".encode())
    return h.hexdigest()


def _cache_candidates(path: PathArg, label_files: Sequence[str]) -> tuple[Path, Path]:
    """(beside the labels, per-user fallback) cache file paths for a split."""
    p = Path(path[0] if isinstance(path, (list, tuple)) else path)
    base = p if p.is_file() else Path(label_files[0]).parent
    primary = base.with_suffix(".cache")
    if isinstance(path, (list, tuple)) and len(path) > 1:  # several sources: name by all of them
        key = hashlib.sha1("\n".join(map(str, path)).encode()).hexdigest()[:8]
        primary = base.with_name(f"{base.name}-{key}.cache")
    return primary, _fallback_path(primary)


def _load_cache(files: Sequence[Path], key: str) -> Optional[dict]:
    for f in files:
        if f.is_file():
            try:
                c = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # unreadable / foreign cache: rebuild
                LOGGER.debug(f"ignoring unreadable cache {f}: {e}")
                continue
            if isinstance(c, dict) and c.get("version") == CACHE_VERSION and c.get("hash") == key:
                c["_file"] = str(f)
                return c
    return None


def _save_cache(files: Sequence[Path], data: dict, prefix: str) -> Optional[str]:
    """Atomically write the cache to the first location that accepts it; return its path.

    A failed write (full disk, read-only folder) leaves any previous cache file intact and no
    temp file behind; it is logged with the path and the cause, and the next location is tried.
    """
    blob = io.BytesIO()
    torch.save(data, blob)  # in memory first: torch.save hides a full disk behind a vague RuntimeError
    failures = []
    for f in files:
        folder = f.parent
        if f is files[-1]:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                failures.append(f"{folder}: {e.strerror or e}")
                continue
        if not is_writable_dir(folder):
            failures.append(f"{folder}: not writable")
            continue
        try:
            with atomic_write(f, "wb") as fh:
                fh.write(blob.getbuffer())
            return str(f)
        except OSError as e:
            failures.append(one_line(e))
    LOGGER.warning(f"{prefix}WARNING: could not write a label cache ({'; '.join(failures)}); "
                   f"the next run verifies the images again")
    return None


def scan_dataset(path: PathArg, nc: Optional[int] = None, prefix: str = "", use_cache: bool = True) -> ScanResult:
    """List, verify (in parallel, cached) and report one split; see the module docstring."""
    img_files, list_problems, skipped = list_image_files(path, prefix)
    if not img_files and not list_problems:
        rep = DatasetReport(prefix=prefix, skipped_msgs=skipped)
        raise NoUsableImagesError(f"{prefix}no images found in {path} (supported: {', '.join(IMG_FORMATS)})",
                                  rep)
    label_files = img2label_paths(img_files)
    key = _files_hash(img_files + label_files, nc)
    cache_files = _cache_candidates(path, label_files or [str(path)]) if img_files else ()
    cache = _load_cache(cache_files, key) if (use_cache and img_files) else None
    report = DatasetReport(prefix=prefix, total=len(img_files) + len(list_problems))
    report.corrupt_msgs += list_problems
    report.corrupt += len(list_problems)
    report.skipped_msgs += skipped

    if cache is not None:
        statuses, shapes = cache["status"], cache["shapes"].numpy()
        counts = cache["counts"].numpy()
        all_labels = np.split(cache["labels"].numpy().astype(np.float32), np.cumsum(counts)[:-1]) if len(counts) else []
        errors, fixes = cache["errors"], cache["fixes"]
        report.cache_file, report.from_cache = cache["_file"], True
    else:
        statuses, shapes_l, all_labels, errors, fixes = [], [], [], [], []
        args = zip(img_files, label_files, repeat(nc))
        with ThreadPool(NUM_THREADS) as pool:
            it = pool.imap(verify_image_label, args, chunksize=16)
            bar = tqdm(it, total=len(img_files), desc=f"{prefix}verifying images and labels", unit="img",
                       disable=len(img_files) < 2000 or not LOGGER.isEnabledFor(logging.INFO), leave=False)
            for r in bar:
                statuses.append(r["status"])
                shapes_l.append(r["shape"])
                all_labels.append(r["labels"])
                errors.append(r["errors"])
                fixes.append(r["fixes"])
        shapes = np.array(shapes_l, dtype=np.int64).reshape(-1, 2)
        counts = np.array([len(x) for x in all_labels], dtype=np.int64)
        cat = np.concatenate(all_labels, 0) if all_labels else np.zeros((0, 5), np.float32)
        data = {"version": CACHE_VERSION, "hash": key, "nc": nc, "img_files": list(img_files),
                "status": statuses, "shapes": torch.from_numpy(shapes), "counts": torch.from_numpy(counts),
                "labels": torch.from_numpy(cat.astype(np.float32)), "errors": errors, "fixes": fixes}
        if use_cache and img_files:
            report.cache_file = _save_cache(cache_files, data, prefix)

    keep_img, keep_lb, keep_labels, keep_shapes = [], [], [], []
    for i, st in enumerate(statuses):
        if st == "corrupt":
            report.corrupt += 1
            report.corrupt_msgs += errors[i]
            report.fixed_msgs += fixes[i]
            continue
        setattr(report, st, getattr(report, st) + 1)
        if st == "missing":
            report.missing_msgs.append(f"{img_files[i]}: no label file {label_files[i]} (used as background)")
        if fixes[i]:
            report.fixed += 1
            report.fixed_msgs += fixes[i]
        keep_img.append(img_files[i])
        keep_lb.append(label_files[i])
        keep_labels.append(all_labels[i])
        keep_shapes.append(shapes[i])
    result = ScanResult(keep_img, keep_lb, keep_labels, np.array(keep_shapes, dtype=np.int64).reshape(-1, 2), report)
    if not keep_img:
        raise NoUsableImagesError(f"{prefix}no usable images in {path}: {report.summary()}; "
                                  f"first problems: {'; '.join(report.corrupt_msgs[:3])}", report)
    return result


def log_report(report: DatasetReport, max_missing: int = 5) -> None:
    """Log the summary, every corrupt and fixed file, and the first missing-label files."""
    LOGGER.info(report.summary())
    for m in report.corrupt_msgs:
        LOGGER.warning(f"{report.prefix}WARNING: excluded: {m}")
    for m in report.fixed_msgs:
        LOGGER.warning(f"{report.prefix}WARNING: fixed: {m}")
    for msgs, what in ((report.missing_msgs, "images without labels"), (report.skipped_msgs, "skipped files")):
        for m in msgs[:max_missing]:
            LOGGER.info(f"{report.prefix}{m}")
        if len(msgs) > max_missing:
            LOGGER.info(f"{report.prefix}... and {len(msgs) - max_missing} more {what} "
                        f"(python -m utils.datasets --data <yaml> lists them all)")


# --------------------------------------------------------------------------- dataset
class LoadImagesAndLabels(Dataset):
    """A YOLO-format split for training (mosaic/mixup/perspective/HSV/flips) or evaluation (rect).

    Items: ``(img uint8 (3, H, W) RGB, labels (n, 6) [0, cls, cx, cy, w, h] normalised, path,
    shapes)`` where ``shapes = ((h0, w0), ((h / h0, w / w0), (padw, padh)))``, or None for mosaic.
    """

    def __init__(self, path: PathArg, img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: Optional[dict] = None, rect: bool = False, cache_images: Union[bool, str] = False,
                 single_cls: bool = False, stride: int = 32, pad: float = 0.0, prefix: str = "",
                 nc: Optional[int] = None, verbose: bool = True):
        self.img_size = img_size
        self.augment = augment
        self.hyp = check_hyp(hyp, prefix) if augment else (dict(hyp) if hyp else {})
        self.rect = rect
        self.mosaic = augment and not rect and self.hyp.get("mosaic", 0) > 0
        self.mosaic_border = [-img_size // 2, -img_size // 2]
        self.stride = stride
        self.path = path
        self.prefix = prefix

        scan = scan_dataset(path, nc=nc, prefix=prefix)
        self.report = scan.report
        if verbose:
            log_report(self.report)
        self.img_files = scan.img_files
        self.label_files = scan.label_files
        self.labels = scan.labels
        self.shapes = scan.shapes
        if single_cls:
            for x in self.labels:
                x[:, 0] = 0

        n = len(self.shapes)
        bi = np.floor(np.arange(n) / batch_size).astype(int)
        self.batch = bi
        self.n = n
        self.indices = list(range(n))

        if rect:  # sort by aspect ratio; each batch gets the smallest stride-multiple shape
            s = self.shapes
            ar = s[:, 1] / s[:, 0]
            irect = ar.argsort(kind="stable")
            self.img_files = [self.img_files[i] for i in irect]
            self.label_files = [self.label_files[i] for i in irect]
            self.labels = [self.labels[i] for i in irect]
            self.shapes = s[irect]
            ar = ar[irect]
            nb = bi[-1] + 1
            shapes = [[1, 1]] * nb
            for i in range(nb):
                ari = ar[bi == i]
                mini, maxi = ari.min(), ari.max()
                if maxi < 1:
                    shapes[i] = [maxi, 1]
                elif mini > 1:
                    shapes[i] = [1, 1 / mini]
            self.batch_shapes = np.ceil(np.array(shapes) * img_size / stride + pad).astype(int) * stride

        self.imgs: list[Optional[np.ndarray]] = [None] * n
        self.img_hw0: list[Optional[tuple[int, int]]] = [None] * n
        self.img_hw: list[Optional[tuple[int, int]]] = [None] * n
        self.npy_files: list[Optional[Path]] = [None] * n
        if cache_images is True:
            cache_images = "ram"
        if cache_images:
            self._cache_images(str(cache_images))

    # ------------------------------------------------------------------ image loading / caching
    def _npy_path(self, f: str) -> Path:
        p = Path(f).with_suffix(".npy")
        return p if is_writable_dir(p.parent) else _fallback_path(p)

    def _cache_images(self, mode: str) -> None:
        if mode not in ("ram", "disk"):
            raise ValueError(f"cache_images must be False, 'ram' or 'disk', got {mode!r}")
        if mode == "ram":
            need = sum(self._scaled_bytes(i) for i in range(self.n))
            try:
                avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
            except (ValueError, OSError, AttributeError):
                avail = None
            if avail is not None and need > 0.8 * avail:
                LOGGER.warning(f"{self.prefix}WARNING: caching images in RAM needs {need / 1e9:.1f} GB but only "
                               f"{avail / 1e9:.1f} GB is free: not caching")
                return
        else:
            self.npy_files = [self._npy_path(f) for f in self.img_files]
            user_cache_dir().mkdir(parents=True, exist_ok=True)
        t0, nbytes = time.time(), 0

        def work(i: int):
            if mode == "disk":
                f = self.npy_files[i]
                if not f.exists():
                    with atomic_write(f, "wb") as fh:  # complete or absent, even when killed
                        np.save(fh, self._read(i))
                return f.stat().st_size
            im, hw0, hw = self.load_image(i)
            self.imgs[i], self.img_hw0[i], self.img_hw[i] = im, hw0, hw
            return im.nbytes

        with ThreadPool(NUM_THREADS) as pool:
            for b in pool.imap(work, range(self.n)):
                nbytes += b
        LOGGER.info(f"{self.prefix}cached {self.n} images ({nbytes / 1e9:.2f} GB, {mode}) in {time.time() - t0:.1f}s")

    def _scaled_bytes(self, i: int) -> int:
        w, h = self.shapes[i]
        r = self.img_size / max(w, h)
        return int(w * r) * int(h * r) * 3

    def _read(self, i: int) -> np.ndarray:
        try:
            return read_image(self.img_files[i])
        except ImageReadError as e:  # changed since the scan: the checker accepted it
            raise ImageReadError(f"{self.prefix}{e}") from None

    def _load_npy(self, i: int) -> Optional[np.ndarray]:
        """The --cache-images disk copy of image i, or None (absent or unusable: the image is read)."""
        npy = self.npy_files[i]
        if npy is None or not npy.is_file():
            return None
        try:
            im = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as e:
            LOGGER.warning(f"{self.prefix}WARNING: ignoring unreadable image cache {npy} ({e})")
            return None
        return im if (im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3) else None

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image i (BGR) resized so its long side is img_size; returns (img, (h0, w0), (h, w))."""
        im = self.imgs[i]
        if im is not None:
            return im, self.img_hw0[i], self.img_hw[i]
        im = self._load_npy(i)
        if im is None:
            im = self._read(i)
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_AREA if (r < 1 and not self.augment) else cv2.INTER_LINEAR
            im = cv2.resize(im, (max(1, int(round(w0 * r))), max(1, int(round(h0 * r)))), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """4 images around a random centre on a 2s x 2s canvas, then random_perspective to s x s."""
        s = self.img_size
        yc, xc = (int(random.uniform(-x, 2 * s + x)) for x in self.mosaic_border)
        indices = [index] + random.choices(self.indices, k=3)
        img4 = None
        labels4 = []
        for k, idx in enumerate(indices):
            img, _, (h, w) = self.load_image(idx)
            if k == 0:
                img4 = np.full((s * 2, s * 2, img.shape[2]), 114, dtype=np.uint8)
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
            elif k == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
                x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
            elif k == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
            else:  # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
            img4[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            padw, padh = x1a - x1b, y1a - y1b
            labels = self.labels[idx].astype(np.float64)
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, padw, padh)
            labels4.append(labels)
        labels4 = np.concatenate(labels4, 0)
        np.clip(labels4[:, 1:], 0, 2 * s, out=labels4[:, 1:])
        hyp = self.hyp
        img4, labels4 = random_perspective(img4, labels4, degrees=hyp["degrees"], translate=hyp["translate"],
                                           scale=hyp["scale"], shear=hyp["shear"], perspective=hyp["perspective"],
                                           border=self.mosaic_border)
        return img4, labels4

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.img_files)

    def __getitem__(self, index: int):
        index = self.indices[index]
        hyp = self.hyp
        mosaic = self.mosaic and random.random() < hyp["mosaic"]
        if mosaic:
            img, labels = self.load_mosaic(index)
            shapes = None
            if hyp["mixup"] and random.random() < hyp["mixup"]:
                img2, labels2 = self.load_mosaic(random.randint(0, self.n - 1))
                img, labels = mixup(img, labels, img2, labels2)
        else:
            img, (h0, w0), (h, w) = self.load_image(index)
            shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h / h0, w / w0), pad)
            labels = self.labels[index].astype(np.float64)
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
            if self.augment:
                img, labels = random_perspective(img, labels, degrees=hyp["degrees"], translate=hyp["translate"],
                                                 scale=hyp["scale"], shear=hyp["shear"],
                                                 perspective=hyp["perspective"])
        if self.augment:
            augment_hsv(img, hgain=hyp["hsv_h"], sgain=hyp["hsv_s"], vgain=hyp["hsv_v"])

        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True)
        if self.augment:
            img, labels = flip_labels(labels, img, hyp)

        labels_out = torch.zeros((nl, 6))
        if nl:
            labels_out[:, 1:] = torch.from_numpy(labels)
        img = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(img), labels_out, self.img_files[index], shapes

    @staticmethod
    def collate_fn(batch):
        """Stack images; concatenate targets with their image index in column 0."""
        img, label, path, shapes = zip(*batch)
        for i, lb in enumerate(label):
            lb[:, 0] = i
        return torch.stack(img, 0), torch.cat(label, 0), path, shapes

    @staticmethod
    def collate_fn4(batch):
        """YOLOv7's ``--quad`` collate: every 4 images become one image of twice the size.

        Per group, with probability 0.5 the first image is upsampled 2x (bilinear), else the four
        are tiled 2x2 (0 top-left, 1 bottom-left, 2 top-right, 3 bottom-right) and their
        normalised xywh targets moved and halved to match. Images beyond a multiple of 4 are
        dropped (as YOLOv7); a batch of fewer than 4 upsamples each image. Train with the loss x4.
        """
        import torch.nn.functional as F

        img, label, path, shapes = zip(*batch)
        groups = [[i] for i in range(len(img))] if len(img) < 4 else [[i, i + 1, i + 2, i + 3]
                                                                       for i in range(0, len(img) - 3, 4)]
        ho = torch.tensor([[0.0, 0, 0, 1, 0, 0]])  # one image height down
        wo = torch.tensor([[0.0, 0, 1, 0, 0, 0]])  # one image width right
        s = torch.tensor([[1.0, 1, 0.5, 0.5, 0.5, 0.5]])
        img4, label4 = [], []
        for g in groups:
            i = g[0]
            if len(g) == 1 or random.random() < 0.5:
                up = F.interpolate(img[i][None].float(), scale_factor=2.0, mode="bilinear", align_corners=False)[0]
                im = up.round().clamp(0, 255).to(img[i].dtype) if not img[i].is_floating_point() else up
                lb = label[i].clone()
            else:
                im = torch.cat((torch.cat((img[i], img[i + 1]), 1), torch.cat((img[i + 2], img[i + 3]), 1)), 2)
                lb = torch.cat((label[i], label[i + 1] + ho, label[i + 2] + wo, label[i + 3] + ho + wo), 0) * s
            img4.append(im)
            label4.append(lb)
        for j, lb in enumerate(label4):
            lb[:, 0] = j
        return (torch.stack(img4, 0), torch.cat(label4, 0), tuple(path[g[0]] for g in groups),
                tuple(shapes[g[0]] for g in groups))


collate_fn = LoadImagesAndLabels.collate_fn


def seed_worker(worker_id: int) -> None:
    """Seed python/numpy in each worker from torch's per-worker seed (set by the loader's generator)."""
    worker_seed = torch.initial_seed() % 2 ** 32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def create_dataloader(path: PathArg, imgsz: int, batch_size: int, stride: int, single_cls: bool = False,
                      hyp: Optional[dict] = None, augment: bool = False, cache: Union[bool, str] = False,
                      pad: float = 0.0, rect: bool = False, rank: int = -1, workers: int = 8, prefix: str = "",
                      shuffle: bool = False, seed: int = 0, nc: Optional[int] = None):
    """(DataLoader, dataset) with collate_fn, seeded order, persistent workers, DDP sampler when rank != -1.

    The order comes from a generator seeded with ``seed`` (+ rank); each worker seeds python and
    numpy from it (``seed_worker``), so augmentations repeat too. With ``workers=0`` the
    augmentations draw from the process RNGs: call ``utils.general.init_seeds`` first.
    Under DDP call ``loader.sampler.set_epoch(epoch)`` each epoch for a fresh shuffle.
    """
    if rect and shuffle:
        LOGGER.warning(f"{prefix}WARNING: --rect is incompatible with shuffle, setting shuffle=False")
        shuffle = False
    with torch_distributed_zero_first(rank):  # rank 0 builds the label cache first
        dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect,
                                      cache_images=cache, single_cls=single_cls, stride=int(stride), pad=pad,
                                      prefix=prefix, nc=nc)
    batch_size = min(batch_size, len(dataset))
    world = torch.distributed.get_world_size() if (rank != -1 and torch.distributed.is_initialized()) else 1
    nw = min((os.cpu_count() or 1) // max(world, 1), batch_size if batch_size > 1 else 0, workers)
    sampler = None if rank == -1 else distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(6148914691236517205 + seed + max(rank, 0))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, num_workers=nw,
                        sampler=sampler, pin_memory=torch.cuda.is_available(), collate_fn=collate_fn,
                        worker_init_fn=seed_worker, generator=generator, persistent_workers=nw > 0)
    return loader, dataset


# --------------------------------------------------------------------------- inference sources
from utils.sources import LoadImages, LoadStreams  # noqa: F401,E402


# --------------------------------------------------------------------------- check CLI
def check_splits(data: Any, img_size: int = 640) -> tuple[bool, list[str]]:
    """Verify every split of a dataset yaml; (ok, report lines)."""
    from utils.dataset_config import check_dataset
    d = check_dataset(data)
    ok, out = True, [f"dataset {d.get('yaml_file') or 'dict'}: nc={d['nc']} ({', '.join(d['names'][:10])}"
                     f"{', ...' if d['nc'] > 10 else ''}), img-size {img_size}"]
    for split in ("train", "val", "test"):
        if d.get(split) is None:
            continue
        try:
            rep = scan_dataset(d[split], nc=d["nc"], prefix=f"{split}: ").report
        except NoUsableImagesError as e:
            rep, ok = e.report, False
        out.append(rep.summary())
        out += [f"  {m}" for m in rep.lines()]
        if rep.usable == 0:
            ok = False
            out.append(f"{split}: ERROR: no usable images")
    return ok, out


def main(argv: Optional[Sequence[str]] = None) -> int:
    from utils.dataset_config import DatasetConfigError, YamlError
    ap = argparse.ArgumentParser(description="Check a YOLO dataset yaml: every image and label of every split")
    ap.add_argument("--data", required=True, help="dataset yaml")
    ap.add_argument("--img-size", type=int, default=640, help="image size (reported)")
    ap.add_argument("--verbose", action="store_true", help="show the full traceback of an error")
    args = ap.parse_args(argv)
    try:
        ok, lines = check_splits(args.data, args.img_size)
    except (DatasetConfigError, YamlError, FileNotFoundError) as e:
        if args.verbose:
            raise
        print(f"ERROR: {e}")
        return 1
    print("\n".join(lines))
    print("OK" if ok else "FAILED: a split has no usable images")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m utils.datasets"))
