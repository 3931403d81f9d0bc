"""Python API: load a detector and run it on a path or a numpy image (also a torch.hub entry point).

    from hubconf import load, detect
    model = load("best-fused.pt")                      # training or fused checkpoint, or .onnx
    r = detect(model, "image.jpg", conf_thres=0.25)    # or a BGR numpy image (H, W, 3) uint8
    r["boxes"]    # (n, 4) float32 x1, y1, x2, y2 in original image pixels
    r["scores"]   # (n,) float32 confidences (objectness x class score)
    r["classes"]  # (n,) int64 class indices; r["names"] maps them to class names

    det = Detector("best.pt", img_size=640)            # keeps the model and settings
    r = det("image.jpg")

    torch.hub.load("path/to/this/repo", "load", source="local", weights="best.pt")

Built from the project's own pieces: ``attempt_load`` (fused on load), ``letterbox``,
``non_max_suppression`` and ``scale_coords``; ONNX files run through ``detect.OnnxModel``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

dependencies = ["torch", "torchvision", "numpy", "yaml", "cv2"]  # torch.hub checks these import

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ImageLike = Union[str, Path, np.ndarray]


def load(weights: Union[str, Path], device: Union[str, torch.device] = "cpu"):
    """A ready-to-run detector: the fused eval-mode ``Model`` of a ``.pt`` checkpoint (training or
    fused), or a :class:`detect.OnnxModel` for an ``.onnx`` export."""
    from detect import load_detector
    from utils.torch_utils import select_device

    dev = device if isinstance(device, torch.device) else select_device(device)
    return load_detector(weights, dev)[0]


def _read_image(image: ImageLike) -> np.ndarray:
    """BGR uint8 (H, W, 3) from a path or an array (grayscale and BGRA are converted)."""
    import cv2

    if isinstance(image, (str, Path)):
        im = cv2.imread(str(image))
        if im is None:
            raise FileNotFoundError(f"{image}: not found or not a readable image")
        return im
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a path or a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image array must be (H, W, 3) BGR, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 (0..255), got {image.dtype}")
    return image


@torch.no_grad()
def detect(model_or_weights: Any, image: ImageLike, img_size: int = 640, conf_thres: float = 0.25,
           iou_thres: float = 0.45, classes: Optional[Sequence[int]] = None, agnostic: bool = False,
           max_det: int = 300, augment: bool = False) -> dict[str, Any]:
    """Detect objects in one image.

    ``model_or_weights``: what :func:`load` returns, or a weights path (loaded on CPU).
    ``image``: a file path or a BGR uint8 numpy array (as ``cv2.imread`` gives).
    Returns ``{"boxes": (n, 4) xyxy original pixels, "scores": (n,), "classes": (n,), "names": [...]}``
    sorted by decreasing score.
    """
    from detect import OnnxModel, end2end_to_detections
    from utils.datasets import letterbox
    from utils.general import check_img_size, non_max_suppression, scale_coords

    model = load(model_or_weights) if isinstance(model_or_weights, (str, Path)) else model_or_weights
    im0 = _read_image(image)
    is_onnx = isinstance(model, OnnxModel)
    if is_onnx:
        stride = model.stride
        shape: Any = list(model.fixed_hw) if model.fixed_hw else check_img_size(img_size, stride)
        auto = model.fixed_hw is None
        p = None
        names = model.names
    else:
        stride = int(model.stride.max())
        shape = check_img_size(img_size, stride)
        auto = True
        p = next(model.parameters())
        names = list(model.names)
    im = letterbox(im0, shape, stride=stride, auto=auto)[0]
    im = np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
    x = torch.from_numpy(im)[None]
    x = x.to(p.device, p.dtype) if p is not None else x.float()
    x = x / 255.0
    if is_onnx:
        out = model(x)
        det = (end2end_to_detections(out, conf_thres, classes) if model.end2end else
               non_max_suppression(out, conf_thres, iou_thres, classes=classes, agnostic=agnostic,
                                   max_det=max_det))[0]
    else:
        out = model(x, augment=augment)
        det = non_max_suppression(out, conf_thres, iou_thres, classes=classes, agnostic=agnostic,
                                  max_det=max_det)[0]
    det = det.detach().float().cpu().clone()
    if len(det):
        det[:, :4] = scale_coords(x.shape[2:], det[:, :4], im0.shape)
    return {"boxes": det[:, :4].numpy().astype(np.float32), "scores": det[:, 4].numpy().astype(np.float32),
            "classes": det[:, 5].numpy().astype(np.int64), "names": list(names)}


class Detector:
    """A loaded model plus inference settings; ``Detector(w)(image)`` returns :func:`detect`'s dict."""

    def __init__(self, weights: Union[str, Path], device: Union[str, torch.device] = "cpu", img_size: int = 640,
                 conf_thres: float = 0.25, iou_thres: float = 0.45, classes: Optional[Sequence[int]] = None,
                 agnostic: bool = False, max_det: int = 300):
        self.model = load(weights, device)
        self.kwargs = dict(img_size=img_size, conf_thres=conf_thres, iou_thres=iou_thres, classes=classes,
                           agnostic=agnostic, max_det=max_det)

    @property
    def names(self) -> list[str]:
        return list(self.model.names)

    def __call__(self, image: ImageLike, **overrides: Any) -> dict[str, Any]:
        return detect(self.model, image, **{**self.kwargs, **overrides})
