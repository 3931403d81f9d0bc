"""Checkpoint files: plain dicts of tensors and data, written atomically, read without pickle code.

Every loader in the project goes through :func:`load_checkpoint`, which uses
``torch.load(..., weights_only=True)``: a file holding pickled objects (e.g. an official
YOLOv7 ``.pt`` with whole modules, or a malicious file) is refused with a clear error
instead of running code.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

FORMAT = "moyolo-ckpt-1"


class CheckpointError(RuntimeError):
    """A checkpoint could not be read safely or lacks what the caller needs."""


def save_checkpoint(ckpt: dict[str, Any], path: Union[str, Path]) -> Path:
    """Write ``ckpt`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A kill at any point leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = dict(ckpt)
    ckpt.setdefault("format", FORMAT)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file permissions
        os.replace(tmp, path)
        try:  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``.

    Raises :class:`CheckpointError` naming the file when it is missing, holds pickled
    objects (code could run on load), or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError and friends: refuse, do not fall back to pickle
        raise CheckpointError(
            f"{path}: refused to load: it is not a plain tensor/data checkpoint and loading it "
            f"could run pickled code ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"Official YOLOv7 .pt files can be converted with "
            f"'python weights/convert_yolov7.py --src FILE --trust-pickle' if you trust their source."
        ) from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, found {type(ckpt).__name__}")
    return ckpt
