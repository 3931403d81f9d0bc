"""Inference preprocessing shared by every runtime and every caller (detect, test, hub, export checks,
quantization calibration): letterbox a BGR image into the network's input, and make the float tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch

from utils.data.augment import letterbox


# --------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class LetterboxInfo:
    """How an original image maps into the network input: ``shape0``/``shape`` (h, w) before and
    after, ``ratio`` (w, h) resize factors and ``pad`` (w, h) padding per side."""
    shape0: tuple[int, int]
    shape: tuple[int, int]
    ratio: tuple[float, float]
    pad: tuple[float, float]

    @property
    def ratio_pad(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """``scale_coords``' ``ratio_pad``: ((ratio_h, ratio_w), (pad_w, pad_h))."""
        return (self.ratio[1], self.ratio[0]), self.pad


def preprocess(img_bgr: np.ndarray, img_size: Union[int, Sequence[int]], stride: int = 32,
               auto: bool = True) -> tuple[np.ndarray, LetterboxInfo]:
    """Letterbox a BGR (H, W, 3) uint8 image and return it as contiguous RGB CHW **uint8** (0..255).

    uint8 keeps batches small until they reach the device; :func:`to_tensor` makes the float
    0..1 network input. ``auto`` pads to the next multiple of ``stride`` only (dynamic-shape
    models); ``auto=False`` pads to exactly ``img_size`` (static-shape files).
    """
    im, ratio, pad = letterbox(img_bgr, img_size, stride=stride, auto=auto)
    chw = np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))
    info = LetterboxInfo(tuple(img_bgr.shape[:2]), tuple(im.shape[:2]), (float(ratio[0]), float(ratio[1])),
                         (float(pad[0]), float(pad[1])))
    return chw, info


def to_tensor(chw: Union[np.ndarray, Sequence[np.ndarray]], device: Union[str, torch.device] = "cpu",
              fp16: bool = False) -> torch.Tensor:
    """(N, 3, H, W) float (half when ``fp16``) in 0..1 on ``device`` from uint8 CHW or NCHW arrays."""
    arr = np.stack(chw, 0) if isinstance(chw, (list, tuple)) else chw
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    x = x.half() if fp16 else x.float()
    x /= 255.0
    return x[None] if x.ndim == 3 else x
