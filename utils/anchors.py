"""Anchor order of a Detect head: anchors sorted like the strides (the smallest anchors on the finest level).

The model side of anchors; fitting them to a dataset is :mod:`utils.autoanchor`.
"""
from __future__ import annotations

import torch.nn as nn

from utils.log import LOGGER, colorstr

PREFIX = "autoanchor: "


def check_anchor_order(m: nn.Module) -> None:
    """Flip the anchors of Detect layer ``m`` when their size order disagrees with the stride order."""
    area = m.anchor_grid.prod(-1).view(-1)  # anchor areas, level-major
    da = area[-1] - area[0]
    ds = m.stride[-1] - m.stride[0]
    if da.sign() != ds.sign() and float(da) != 0.0:
        LOGGER.info(f"{colorstr(PREFIX)}Reversing anchor order")
        m.anchors[:] = m.anchors.flip(0)
        m.anchor_grid[:] = m.anchor_grid.flip(0)
