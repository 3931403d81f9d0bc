"""YOLOv7's import path for its general helpers (``from utils.general import non_max_suppression``).

Each lives in its own module; this one only re-exports them: boxes and NMS in :mod:`utils.boxes`, the logger in
:mod:`utils.log`, stride-fitting sizes in :mod:`utils.sizes`, run folders in :mod:`utils.runs`, seeds in
:mod:`utils.torch_utils`, the LR ramp in :mod:`utils.train_steps`, label weights in :mod:`utils.data.labels`,
COCO ids in :mod:`utils.data.coco`.
"""
from __future__ import annotations

from utils.boxes import (
    bbox_iou,
    box_iou,
    clip_coords,
    non_max_suppression,
    scale_coords,
    xywh2xyxy,
    xywhn2xyxy,
    xyxy2ltwh,
    xyxy2xywh,
    xyxy2xywhn,
)
from utils.data.coco import coco80_to_coco91_class
from utils.data.labels import labels_to_class_weights, labels_to_image_weights
from utils.log import LOGGER, colorstr, set_logging
from utils.runs import increment_path
from utils.sizes import check_img_size, make_divisible
from utils.torch_utils import init_seeds
from utils.train_steps import one_cycle

__all__ = ["LOGGER", "bbox_iou", "box_iou", "check_img_size", "clip_coords", "coco80_to_coco91_class", "colorstr",
           "increment_path", "init_seeds", "labels_to_class_weights", "labels_to_image_weights", "make_divisible",
           "non_max_suppression", "one_cycle", "scale_coords", "set_logging", "xywh2xyxy", "xywhn2xyxy",
           "xyxy2ltwh", "xyxy2xywh", "xyxy2xywhn"]
