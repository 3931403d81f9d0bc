"""Inference sources: images, folders, globs, videos, .txt lists, webcams and streams, read safely.

Only regular files are opened (a named pipe called ``x.jpg`` is reported, never read: opening it
would block); an image is checked before it is decoded: its header size against the
decompression-bomb limit that training uses (``utils.datasets.MAX_IMAGE_PIXELS``), a JPEG for its
end-of-image marker (OpenCV grey-fills a truncated JPEG without a word). Files that fail are
named, skipped and kept in ``LoadImages.skipped`` so the caller can list them at the end.

``split_sources`` splits a ``.txt`` list per line into local paths and streams; a missing path
is reported with its line number and left out, the rest is processed.
"""
from __future__ import annotations

import glob
import math
import os
import stat
import time
from pathlib import Path
from threading import Thread
from typing import Optional, Sequence, Union

import cv2
import numpy as np
from PIL import Image

from utils.cli import UserError
from utils.data.files import IMG_FORMATS, VID_FORMATS, ImageReadError, PathArg, check_image_size, read_image
from utils.data.preprocess import preprocess
from utils.log import LOGGER

STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")

__all__ = ["LoadImages", "LoadStreams", "STREAM_PREFIXES", "is_stream_url", "is_stream", "split_sources",
           "regular_file_problem", "read_source_image", "folder_frame_numbers", "frame_sequence"]


def is_stream_url(s: str) -> bool:
    """A webcam index or a stream URL (rtsp, rtmp, http, https)."""
    return s.isnumeric() or s.lower().startswith(STREAM_PREFIXES)


def _list_lines(txt: Union[str, Path]) -> list[tuple[int, str]]:
    return [(i, x.strip()) for i, x in enumerate(Path(txt).read_text().splitlines(), 1) if x.strip()]


def is_stream(source: str) -> bool:
    """Webcam index, stream URL, or a .txt list whose entries are all webcams or stream URLs."""
    if is_stream_url(source):
        return True
    if source.endswith(".txt") and Path(source).is_file():
        lines = _list_lines(source)
        return bool(lines) and all(is_stream_url(x) for _, x in lines)
    return False


def split_sources(txt: Union[str, Path]) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(local paths, streams, problems as (entry, message)) of a .txt list, one entry per line.

    Local entries may be files, folders or globs (relative ones are taken from the working
    folder, then from the list's folder); a missing one becomes a problem line and is left out.
    """
    files, streams, problems = [], [], []
    for ln, s in _list_lines(txt):
        if is_stream_url(s):
            streams.append(s)
            continue
        p = Path(s).expanduser()
        if not p.is_absolute() and not os.path.lexists(p) and (Path(txt).parent / p).exists():
            p = Path(txt).parent / p
        if any(ch in s for ch in "*?[") or os.path.lexists(p):
            files.append(str(p))
        else:
            problems.append((s, f"{txt}:{ln}: {s} does not exist; skipped"))
    return files, streams, problems


def regular_file_problem(path: Union[str, Path]) -> Optional[str]:
    """None for a regular file (links followed), else why it is not read (missing, pipe, device...)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist" + (" (broken link)" if os.path.islink(path) else "")
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISREG(st.st_mode):
        return None
    kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a named pipe" if stat.S_ISFIFO(st.st_mode) \
        else "a device or socket"
    return f"is not a regular file ({kind})"


def _jpeg_problem(path: str) -> Optional[str]:
    """Why a JPEG is damaged (truncated: no end-of-image marker and PIL cannot decode it), else None."""
    with open(path, "rb") as f:
        head = f.read(3)
        if head[:2] != b"\xff\xd8":
            return None  # not a JPEG whatever its name says; the decoder decides
        f.seek(-2, 2)
        if f.read() == b"\xff\xd9":
            return None
    try:
        with Image.open(path) as im:
            im.load()  # raises on truncation (ImageFile.LOAD_TRUNCATED_IMAGES is off by default)
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError ...
        return f"truncated or damaged JPEG ({type(e).__name__}: {e})"
    return None


def read_source_image(path: str) -> np.ndarray:
    """BGR uint8 image of one file, refusing what training refuses; raises ``ImageReadError`` naming it."""
    check_image_size(path)  # regular file, header readable, under the pixel limit
    why = _jpeg_problem(path)
    if why:
        raise ImageReadError(f"{path}: {why}")
    return read_image(path, checked=True)


def _expand(path: PathArg) -> list[str]:
    files: list[str] = []
    for p in (path if isinstance(path, (list, tuple)) else [path]):
        p = os.path.expanduser(str(p))
        if any(ch in p for ch in "*?["):
            files.extend(sorted(glob.glob(p, recursive=True)))
        elif os.path.isdir(p):
            files.extend(sorted(glob.glob(os.path.join(p, "*.*"))))
        elif os.path.lexists(p):
            files.append(p)
        else:
            raise FileNotFoundError(2, "does not exist", p)
    return files


class LoadImages:
    """Iterate images and video frames from a file, folder, glob or list.

    Yields ``(path, img (3, H, W) RGB letterboxed uint8, img0 BGR original, vid_cap or None, info)``.
    ``skipped`` maps each file that was not read to the reason (logged as it happens).
    """

    def __init__(self, path: PathArg, img_size: Union[int, Sequence[int]] = 640, stride: int = 32, auto: bool = True):
        img_formats, vid_formats = IMG_FORMATS, VID_FORMATS
        files = _expand(path)
        images = [x for x in files if x.rsplit(".", 1)[-1].lower() in img_formats]
        videos = [x for x in files if x.rsplit(".", 1)[-1].lower() in vid_formats]
        others = [x for x in files if x not in images and x not in videos and os.path.isfile(x)]
        if others:
            LOGGER.warning(f"WARNING: skipping {len(others)} files that are neither images nor videos: "
                           f"{', '.join(others[:5])}{' ...' if len(others) > 5 else ''}")
        self.img_size, self.stride, self.auto = img_size, stride, auto
        self.files = images + videos
        self.nf = len(self.files)
        self.video_flag = [False] * len(images) + [True] * len(videos)
        self.skipped: dict[str, str] = {}
        self.mode = "image"
        self.cap = None
        self._cap_path: Optional[str] = None
        self.frame, self.frames = 0, 0
        if not self.nf:
            raise FileNotFoundError(f"No images or videos found in {path}. Supported: images {img_formats}, "
                                    f"videos {vid_formats}")

    def skip(self, path: str, why: str) -> None:
        """Record and report a file that is not processed."""
        self.skipped[path] = why
        LOGGER.warning(f"WARNING: skipping {why if why.startswith(path) else f'{path}: {why}'}")

    def _new_video(self, path: str) -> bool:
        self._cap_path = path
        self.frame = 0
        why = regular_file_problem(path)
        if why:
            self.cap = None
            self.skip(path, why)
            return False
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            self.skip(path, "cannot open video")
            return False
        self.frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        return True

    def __iter__(self):
        self.count = 0
        return self

    def _next_frame(self, path: str) -> Optional[np.ndarray]:
        self.mode = "video"
        if self._cap_path != path and not self._new_video(path):
            self.count += 1
            return None
        ok, img0 = self.cap.read() if self.cap is not None else (False, None)
        if not ok:
            if self.cap is not None:
                self.cap.release()
            if self.frame == 0 and path not in self.skipped:
                self.skip(path, "no decodable frame")
            self.count += 1
            return None
        self.frame += 1
        return img0

    def _next_image(self, path: str) -> Optional[np.ndarray]:
        self.mode = "image"
        self.count += 1
        try:
            return read_source_image(path)
        except ImageReadError as e:
            self.skip(path, str(e))
            return None

    def __next__(self):
        while True:
            if self.count >= self.nf:
                raise StopIteration
            path = self.files[self.count]
            if self.video_flag[self.count]:
                img0 = self._next_frame(path)
                info = f"video {self.count + 1}/{self.nf} ({self.frame}/{self.frames}) {path}: "
                cap = self.cap
            else:
                img0 = self._next_image(path)
                info = f"image {self.count}/{self.nf} {path}: "
                cap = None
            if img0 is not None:
                return path, preprocess(img0, self.img_size, self.stride, self.auto)[0], img0, cap, info

    def __len__(self) -> int:
        return self.nf


def _open_stream(i: int, n: int, s: str) -> "cv2.VideoCapture":
    if not is_stream_url(s) and os.path.lexists(s):
        why = regular_file_problem(s)
        if why:
            raise UserError(f"{i + 1}/{n}: stream source {s} {why}")
    cap = cv2.VideoCapture(int(s) if s.isnumeric() else s)
    if not cap.isOpened():
        raise ConnectionError(f"{i + 1}/{n}: failed to open stream {s}")
    return cap


class LoadStreams:
    """Read webcams (index), stream URLs or video files in background threads, newest frame first.

    ``sources``: one source, a list, or a .txt file with one source per line. Yields
    ``(sources, img (n, 3, H, W) RGB letterboxed uint8, img0 list of BGR frames, None, '')``.
    """

    def __init__(self, sources: Union[str, Sequence[str]] = "0", img_size: Union[int, Sequence[int]] = 640,
                 stride: int = 32, auto: bool = True):
        if isinstance(sources, (list, tuple)):
            srcs = [str(s) for s in sources]
        elif os.path.isfile(str(sources)) and str(sources).endswith(".txt"):
            srcs = [x for _, x in _list_lines(sources)]
        else:
            srcs = [str(sources)]
        self.mode = "stream"
        self.img_size, self.stride, self.auto = img_size, stride, auto
        self.sources = srcs
        n = len(srcs)
        self.imgs: list[Optional[np.ndarray]] = [None] * n
        self.fps, self.frames, self.threads = [0.0] * n, [0] * n, [None] * n
        self._stop = False
        for i, s in enumerate(srcs):
            cap = _open_stream(i, n, s)
            w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps[i] = fps if (fps and math.isfinite(fps) and fps > 0) else 30.0
            frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.frames[i] = frames if frames > 0 else float("inf")
            ok, self.imgs[i] = cap.read()
            if not ok:
                raise ConnectionError(f"{i + 1}/{n}: no frame from stream {s}")
            self.threads[i] = Thread(target=self._update, args=(i, cap, s), daemon=True)
            LOGGER.info(f"{i + 1}/{n}: {s} {w}x{h} at {self.fps[i]:.0f} FPS")
            self.threads[i].start()
        shapes = {preprocess(x, img_size, stride, auto)[0].shape for x in self.imgs}
        self.rect = len(shapes) == 1
        if not self.rect:
            LOGGER.warning("WARNING: streams differ in shape; letterboxing all to a square for one batch")

    def _update(self, i: int, cap: "cv2.VideoCapture", stream: str) -> None:
        n = 1
        while cap.isOpened() and n < self.frames[i] and not self._stop:
            n += 1
            if cap.grab():
                ok, im = cap.retrieve()
                if ok:
                    self.imgs[i] = im
                else:
                    LOGGER.warning(f"WARNING: stream {stream} unresponsive; reopening")
                    cap.open(int(stream) if stream.isnumeric() else stream)
            else:
                break
            time.sleep(1 / self.fps[i])
        cap.release()

    def __iter__(self):
        self.count = -1
        return self

    def __next__(self):
        self.count += 1
        if not any(t.is_alive() for t in self.threads) and self.count > 0:
            raise StopIteration
        img0 = [x.copy() for x in self.imgs]
        img = np.stack([preprocess(x, self.img_size, self.stride, self.rect and self.auto)[0] for x in img0], 0)
        return self.sources, img, img0, None, ""

    def close(self) -> None:
        """Stop the reader threads."""
        self._stop = True

    def __len__(self) -> int:
        return 10 ** 12


# --------------------------------------------------------------------------- sequences (for tracking)
def folder_frame_numbers(dataset: Union[LoadImages, LoadStreams]) -> dict[str, int]:
    """Each image file's frame number (from 1) among the image files of its folder, in reading order.

    A folder of frames is one tracked sequence, and an unreadable frame still takes its place in
    time (the tracker ages its tracks over the gap). Streams have no files: ``{}``.
    """
    if isinstance(dataset, LoadStreams):
        return {}
    seen: dict[str, int] = {}
    out: dict[str, int] = {}
    for f, is_video in zip(dataset.files, dataset.video_flag):
        if not is_video:
            folder = str(Path(f).parent)
            seen[folder] = out[f] = seen.get(folder, 0) + 1
    return out


def frame_sequence(dataset: Union[LoadImages, LoadStreams], src: str, i: int,
                   frames: dict[str, int]) -> tuple[str, str, Optional[int]]:
    """(sequence key, sequence name, frame number or None to count on) of the image ``src`` just read.

    A video file and each stream of a batch (slot ``i``) are sequences; images form one sequence per
    folder, numbered by :func:`folder_frame_numbers` (``frames``).
    """
    p = Path(src)
    if isinstance(dataset, LoadStreams):
        return f"stream {i}: {src}", f"stream{i}" if src.isnumeric() or "://" in src else p.stem, None
    if dataset.mode == "video":
        return src, p.stem, dataset.frame
    return str(p.parent), p.parent.name or "images", frames.get(src)
