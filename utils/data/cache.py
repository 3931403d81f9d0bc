"""Scanning a split: every image and label verified in parallel, the result cached and reported.

``scan_dataset`` returns a ``DatasetReport`` (counts plus one ``path[:line]: reason`` message per corrupt, fixed or
missing-label file). Results are cached in a ``.cache`` file keyed by a hash of the image and label paths, sizes
and mtimes (beside the labels when that folder is writable, else under ``$MOYOLO_CACHE_DIR`` or
``~/.cache/moyolo``).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from itertools import repeat
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from utils.atomic import atomic_write
from utils.cli import one_line
from utils.data.files import IMG_FORMATS, PathArg, img2label_paths, list_image_files
from utils.data.labels import verify_image_label

# --------------------------------------------------------------------------- inference sources
from utils.data.sources import LoadImages, LoadStreams  # noqa: F401,E402
from utils.log import LOGGER

NUM_THREADS = min(8, max(1, (os.cpu_count() or 1)))
CACHE_VERSION = 2  # 2: images verified by decoding with the training reader (older caches are rebuilt)


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
