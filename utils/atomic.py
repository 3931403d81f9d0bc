"""Atomic file and folder writes: an artifact appears at its final path complete, or not at all.

Every file a CLI writes (checkpoints, exports, converted weights, dataset conversions, caches)
goes through these helpers: the data is written to a temp name beside the target, flushed and
fsynced, then renamed over the target. A failure (e.g. ``No space left on device``) removes the
temp file, leaves any previous file untouched and raises :class:`WriteError` naming the path.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Union

PathLike = Union[str, Path]
TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\..+\.(old-)?[a-z0-9_]{8}\.tmp(\.[^.]+)?$")  # mkstemp/mkdtemp: 8 random chars


class WriteError(OSError):
    """Writing ``path`` failed; the message names the path and the cause."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _usual_mode(path: Path, is_dir: bool = False) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if is_dir else 0o666) & ~umask)  # mkstemp/mkdtemp create 0600/0700


def _write_error(path: Path, exc: OSError) -> WriteError:
    cause = exc.strerror or str(exc) or type(exc).__name__
    err = WriteError(exc.errno, f"cannot write: {cause}")
    err.filename = str(path)
    return err


def _disk_full(folder: Path) -> bool:
    """True when the file system of ``folder`` has no block left for this user.

    Writers such as ``torch.save`` / ``torch.jit.save`` / ``torch.onnx.export`` turn a full disk
    into a vague RuntimeError ("unexpected pos", "file write failed"); this recovers the cause.
    """
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows) or folder gone
        return False
    free = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return free == 0


def _full_disk_error(path: Path, exc: BaseException) -> WriteError:
    detail = " ".join(str(exc).split())[:120]
    err = WriteError(errno.ENOSPC, f"cannot write: {os.strerror(errno.ENOSPC)} ({type(exc).__name__}: {detail})")
    err.filename = str(path)
    return err


def temp_name(path: Path) -> str:
    """Prefix of the temp names used for ``path`` (``.NAME.`` in the same folder)."""
    return f".{path.name}."


def _is_temp_name(name: str) -> bool:
    """True for names this module (or a writer it handed a temp path to) creates.

    ``.NAME.XXXX.tmp`` (folders, legacy files) and ``.NAME.XXXX.tmp.SUFFIX`` (files: the
    target's suffix stays last so that writers choosing the format by extension, such as
    ``cv2.imwrite`` or ``np.save``, see the real one).
    """
    return bool(_TEMP_RE.match(name))


def _ours(exc: OSError, tmp: Path, path: Path) -> bool:
    """True when ``exc`` concerns the target, its temp file/folder or no file: a failure to write.

    An OSError about another file (a missing input read inside the block) is not a write
    error of the target and passes through unchanged.
    """
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    if not names:
        return True
    tmp_s = str(tmp)
    return any(str(n) in (tmp_s, str(path)) or str(n).startswith(tmp_s + os.sep) for n in names)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it to ``path`` when the block succeeds.

    For writers that take a file name (``torch.onnx.export``, ``cv2.imwrite``, ``np.save``, ...):
    the temp name ends with ``path``'s own suffix, so format-by-extension writers work.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=temp_name(path), suffix=TEMP_SUFFIX + path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise _write_error(path, e) from e
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.is_file():
            raise WriteError(0, "the writer produced no file", str(path))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _usual_mode(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, WriteError) or not _ours(e, tmp, path):
            raise
        raise _write_error(path, e) from e
    except Exception as e:
        full = _disk_full(path.parent)  # checked before the partial temp file frees its space
        tmp.unlink(missing_ok=True)
        if full:
            raise _full_disk_error(path, e) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """``with atomic_write(p, "w") as f: f.write(...)``: ``p`` holds the old or the whole new content."""
    if "w" not in mode:
        raise ValueError(f"atomic_write needs a write mode, got {mode!r}")
    with atomic_path(path) as tmp:
        try:
            with open(tmp, mode, encoding=encoding if "b" not in mode else None) as f:
                yield f
                f.flush()
        except OSError as e:
            if isinstance(e, WriteError) or not _ours(e, tmp, Path(path)):
                raise
            raise _write_error(Path(path), e) from e


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def copy_file(src: PathLike, path: PathLike) -> Path:
    """Atomically copy the file ``src`` to ``path`` (bytes only, no metadata); returns ``path``."""
    with atomic_path(path) as tmp:
        shutil.copyfile(src, tmp)
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; when the block succeeds it replaces ``path`` whole.

    For exports that are folders (OpenVINO IR, NCNN param/bin). An existing folder is moved
    aside first and deleted only after the new one is in place.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=temp_name(path), suffix=TEMP_SUFFIX, dir=path.parent))
    except OSError as e:
        raise _write_error(path, e) from e
    old = None
    try:
        yield tmp
        _usual_mode(tmp, is_dir=True)
        if path.exists() or path.is_symlink():
            old = path.with_name(f"{temp_name(path)}old-{secrets.token_hex(4)}{TEMP_SUFFIX}")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        full = isinstance(e, Exception) and not isinstance(e, OSError) and _disk_full(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old.exists() or old.is_symlink()) and not path.exists():
            os.replace(old, path)
        if isinstance(e, OSError) and not isinstance(e, WriteError) and _ours(e, tmp, path):
            raise _write_error(path, e) from e
        if full:
            raise _full_disk_error(path, e) from e
        raise
    if old is not None:
        _remove(old)


def clean_stale_temps(folder: PathLike, min_age_s: float = 0.0) -> list[Path]:
    """Remove temp files/folders this module left in ``folder`` (after a kill); return what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        if not _is_temp_name(p.name):
            continue
        try:
            if now - p.lstat().st_mtime < min_age_s:
                continue
            _remove(p, strict=True)
            removed.append(p)
        except OSError:
            continue
    return removed


def _remove(p: Path, strict: bool = False) -> None:
    """Delete a file, link or folder (a link is removed, never followed)."""
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    except OSError:
        if strict:
            raise
