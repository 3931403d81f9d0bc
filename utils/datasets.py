"""YOLOv7's import path for the data side (``from utils.datasets import LoadImages, letterbox``), and its CLI.

The code lives in :mod:`utils.data` (files, labels, cache, dataset, loader, sources, augment); this module only
re-exports it. ``python -m utils.datasets --data my.yaml [--img-size 640]`` checks every split of a dataset yaml
without training (:mod:`utils.data.check`).
"""
from __future__ import annotations

import sys

from utils.cli import run_cli
from utils.data.augment import letterbox
from utils.data.cache import DatasetReport, NoUsableImagesError, is_writable_dir, scan_dataset, user_cache_dir
from utils.data.check import check_splits, main
from utils.data.dataset import LoadImagesAndLabels, collate_fn
from utils.data.files import (
    IMG_FORMATS,
    MAX_IMAGE_PIXELS,
    VID_FORMATS,
    ImageReadError,
    check_image_size,
    exif_size,
    img2label_paths,
    list_image_files,
    read_image,
)
from utils.data.loader import create_dataloader
from utils.data.sources import LoadImages, LoadStreams

__all__ = ["IMG_FORMATS", "VID_FORMATS", "img2label_paths", "letterbox", "scan_dataset", "DatasetReport",
           "LoadImagesAndLabels", "create_dataloader", "collate_fn", "LoadImages", "LoadStreams",
           "NoUsableImagesError", "exif_size", "user_cache_dir", "is_writable_dir", "MAX_IMAGE_PIXELS",
           "check_image_size", "read_image", "ImageReadError", "list_image_files", "check_splits", "main"]

if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m utils.datasets"))
