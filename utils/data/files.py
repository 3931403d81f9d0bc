"""Dataset files: listing images (folders, globs, ``.txt`` lists; regular files only, every real folder
once), the YOLOv7 image -> label path rule, and the one image reader with its header-only pixel guard.

``read_image`` is the one reader (the label checker decodes with it too, so what the check accepts, training can
read); ``check_image_size`` refuses a decompression bomb (``MAX_IMAGE_PIXELS``) from the header alone.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# --------------------------------------------------------------------------- inference sources

IMG_FORMATS = ("bmp", "jpg", "jpeg", "png", "tif", "tiff", "webp", "mpo")  # what both PIL and OpenCV decode
VID_FORMATS = ("mov", "avi", "mp4", "mpg", "mpeg", "m4v", "wmv", "mkv")
PIL_FORMATS = {"bmp", "jpeg", "png", "tiff", "webp", "mpo"}  # PIL's Image.format, lower case
MAX_IMAGE_PIXELS = 178_956_970  # PIL's decompression-bomb error limit: 20000x20000 (400 Mpx) is refused
PathArg = Union[str, Path, Sequence[Union[str, Path]]]


# --------------------------------------------------------------------------- paths
def img2label_paths(img_paths: Sequence[str]) -> list[str]:
    """YOLOv7 rule: the last ``/images/`` becomes ``/labels/`` and the extension ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(x.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for x in img_paths]


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
