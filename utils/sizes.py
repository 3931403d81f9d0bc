"""Sizes that fit a network's stride: channel counts and input image sizes rounded to a multiple.
"""
from __future__ import annotations

import math

from utils.log import LOGGER


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= x."""
    return int(math.ceil(x / divisor) * divisor)


def check_img_size(img_size: int, s: int = 32) -> int:
    """Round an image size up to a multiple of the model stride, warning when it changes."""
    new_size = make_divisible(img_size, int(s))
    if new_size != img_size:
        LOGGER.warning(f"WARNING: --img-size {img_size} must be a multiple of max stride {s}, "
                       f"updating to {new_size}")
    return new_size
