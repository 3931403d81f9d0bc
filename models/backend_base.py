"""What every loaded model file is: the :class:`Backend` interface, thread settings, the metadata readers
and the decode of raw head outputs, shared by the format modules (:mod:`models.backend` registers them).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from utils.boxes import decode_level, non_max_suppression
from utils.cli import UserError
from utils.names import names_list
from utils.safe_yaml import load_yaml
from utils.sizes import check_img_size

PathLike = Union[str, Path]
Weights = Union[PathLike, Sequence[PathLike]]


# --------------------------------------------------------------------------- threads
def default_threads() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(n: Optional[int] = None) -> int:
    """Use ``n`` (default: :func:`default_threads`) intra-op threads in PyTorch; returns ``n``.

    Spinning OpenMP workers are what collapse latency when another process competes for the
    cores; the CLIs set ``OMP_WAIT_POLICY=PASSIVE`` before torch loads, and ONNX Runtime sessions
    made here never spin.
    """
    if n is not None and int(n) < 1:
        raise UserError(f"--threads {n}: must be at least 1")
    n = int(n) if n else default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


# --------------------------------------------------------------------------- backends
def decode_raw(outputs: Sequence[torch.Tensor], anchors: torch.Tensor, strides: Sequence[float]) -> torch.Tensor:
    """Decoded (B, N, no) from raw per-level head outputs (B, na, ny, nx, no) (export ``--no-grid``).

    ``anchors`` (nl, na, 2) in pixels; the Detect head's own formula (:func:`utils.boxes.decode_level`).
    """
    levels = [decode_level(p.float(), anchors[i].to(p.device), float(strides[i])) for i, p in enumerate(outputs)]
    return torch.cat(levels, 1)


def end2end_to_detections(out: Sequence[torch.Tensor], conf_thres: float = 0.0,
                          classes: Optional[Sequence[int]] = None) -> list[torch.Tensor]:
    """Per-image (n, 6) [x1, y1, x2, y2, conf, cls] from end2end outputs (num_dets, boxes, scores, classes)."""
    num, boxes, scores, cls = out
    dets = []
    for i in range(boxes.shape[0]):
        n = int(num[i].reshape(-1)[0])
        d = torch.cat((boxes[i, :n].float(), scores[i, :n, None].float(), cls[i, :n, None].float()), 1)
        keep = d[:, 4] > conf_thres
        if classes is not None:
            keep &= (d[:, 5:6] == torch.tensor(list(classes), dtype=d.dtype, device=d.device)).any(1)
        dets.append(d[keep])
    return dets


class Backend:
    """A loaded model of any format. ``__call__(x)`` takes (N, 3, H, W) float 0..1 and returns the
    decoded predictions (N, anchors, 5 + nc) as the PyTorch model's inference output, without
    gradients (end2end graphs return their four outputs instead; use :meth:`predict`)."""

    format = "?"
    end2end = False
    supports_augment = False

    def __init__(self, path: PathLike, device: torch.device):
        self.path = Path(path)
        self.device = device
        self.names: list[str] = []
        self.stride = 32
        self.imgsz: Optional[tuple[int, int]] = None  # fixed (h, w) input of static-shape files
        self.batch: Optional[int] = None  # fixed batch size, or None
        self.fp16 = False
        self.meta: dict[str, Any] = {}

    @property
    def nc(self) -> int:
        return len(self.names)

    def __call__(self, x: torch.Tensor, augment: bool = False) -> Any:
        raise NotImplementedError

    def input_size(self, img_size: Union[int, Sequence[int]]) -> tuple[list[int], bool]:
        """([h, w], letterbox ``auto``) for a requested size: the file's own size when it is fixed."""
        if self.imgsz is not None:
            return list(self.imgsz), False
        s = [img_size, img_size] if isinstance(img_size, int) else list(img_size) * (2 if len(img_size) == 1 else 1)
        return [check_img_size(int(v), self.stride) for v in s[:2]], True

    def check_batch(self, n: int) -> None:
        """Refuse a batch size a static graph cannot take."""
        if self.batch is not None and n != self.batch:
            raise UserError(f"{self.path}: this {self.format} file takes batches of {self.batch}, got {n}; "
                            f"re-export with --batch-size {n} or --dynamic")

    @torch.no_grad()
    def predict(self, x: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                classes: Optional[Sequence[int]] = None, agnostic: bool = False, max_det: int = 300,
                augment: bool = False) -> list[torch.Tensor]:
        """Final per-image detections (n, 6) [x1, y1, x2, y2, conf, cls] in input pixels."""
        if self.end2end:
            return end2end_to_detections(self(x), conf_thres, classes)
        out = self(x, augment=augment) if self.supports_augment else self(x)
        return non_max_suppression(out, conf_thres, iou_thres, classes=classes, agnostic=agnostic, max_det=max_det)

    @torch.no_grad()
    def warmup(self, imgsz: Optional[Sequence[int]] = None) -> None:
        """One forward on zeros so first-call costs (allocation, kernel selection) are not timed."""
        h, w = self.imgsz or tuple(imgsz or (640, 640))
        self(torch.zeros(self.batch or 1, 3, h, w, device=self.device,
                         dtype=torch.half if self.fp16 else torch.float))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, format={self.format}, nc={self.nc}, stride={self.stride})"



def read_meta(items: dict[str, str]) -> dict[str, Any]:
    meta = {}
    for k, v in items.items():
        try:
            meta[k] = json.loads(v)
        except (TypeError, ValueError):
            meta[k] = v
    return meta


def apply_meta(b: Backend, meta: dict[str, Any], nc_from_output: Optional[int]) -> None:
    b.meta = meta
    b.stride = int(meta.get("stride", 32))
    b.names = names_list(meta.get("names"), meta.get("nc", nc_from_output))


# --------------------------------------------------------------------------- folder formats
def read_folder_meta(folder: Path) -> dict[str, Any]:
    """The ``metadata.yaml`` export.py writes into an OpenVINO or NCNN folder (names, stride, size)."""
    f = folder / "metadata.yaml"
    if not f.is_file():
        raise UserError(f"{folder}: no metadata.yaml (names, stride, image size); export it with export.py")
    return load_yaml(f, "export metadata")


def export_folder(path: Path, suffix: str) -> Path:
    """The export folder of ``path`` (the folder itself, or the folder of a file inside it)."""
    folder = path if path.is_dir() else path.parent
    if not any(folder.glob(f"*{suffix}")):
        raise UserError(f"{path}: no {suffix} file in {folder}")
    return folder
