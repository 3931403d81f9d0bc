"""Helpers shared by the model tests: the agreement measure and random, well-conditioned weights."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from models.common import ImplicitA, ImplicitM

# Train-time branch names of MobileOneBlock / RepConv that must be gone after fusing.
TRAIN_BRANCHES = ("rbr_conv", "rbr_scale", "rbr_skip", "rbr_dense", "rbr_1x1", "rbr_identity")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|a| over the whole output (``a`` is the reference); 0 when both are all zeros
    (e.g. the gradient of a layer behind a ReLU that is off for the whole batch), inf when only ``a`` is."""
    scale = a.abs().max()
    diff = (a - b).abs().max()
    if scale == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / scale)


@torch.no_grad()
def randomize_weights(module: nn.Module, seed: int = 0, *, mean_std: float, var: tuple[float, float],
                      gamma: tuple[float, float], beta_std: float, implicit_std: float,
                      conv_bias_std: Optional[float] = None) -> nn.Module:
    """Seeded random BN statistics/affine (var ~ U(var[0], var[0] + var[1]), gamma likewise), conv
    weights N(0, 1/fan_in), optional conv biases and implicit offsets, so that folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * mean_std)
            m.running_var.copy_(torch.rand(c, generator=g) * var[1] + var[0])
            m.weight.copy_(torch.rand(c, generator=g) * gamma[1] + gamma[0])
            m.bias.copy_(torch.randn(c, generator=g) * beta_std)
        elif isinstance(m, nn.Conv2d):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / (m.weight[0].numel() ** 0.5))
            if conv_bias_std is not None and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * conv_bias_std)
        elif isinstance(m, (ImplicitA, ImplicitM)):
            m.implicit.add_(torch.randn(m.implicit.shape, generator=g) * implicit_std)
    return module


def micro_cfg(nc: int, se_in_stage2: bool = False) -> dict:
    """A tiny yaml dict with every re-parameterizable block (MobileOne, Conv, RepConv, IDetect): fast to build."""
    stage2 = [32, 2, 4, True, 1] if se_in_stage2 else [32, 2, 4, False, 0]
    return {"nc": nc, "depth_multiple": 1.0, "width_multiple": 1.0,
            "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
            "backbone": [[-1, 1, "MobileOneBlock", [16, 3, 2, 1]],
                         [-1, 1, "MobileOne", [16, 1, 4, False, 0]],
                         [-1, 1, "MobileOne", stage2],
                         [-1, 1, "Conv", [32, 3, 2, None, 1, "nn.LeakyReLU(0.1)"]],
                         [-1, 1, "RepConv", [32, 3, 2]]],
            "head": [[-1, 1, "nn.Upsample", [None, 2, "nearest"]],
                     [[-1, 3], 1, "Concat", [1]],
                     [-1, 1, "Conv", [16, 1, 1]],
                     [[2, 7, 4], 1, "IDetect", ["nc", "anchors"]]]}


def fuse_twice(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output before, output after) fusing; checks fuse() returns the model and is idempotent (same
    output and state dict bit for bit) and leaves nothing train-time."""
    with torch.no_grad():
        y0 = m(x)[0]
        assert m.fuse() is m
        y1 = m(x)[0]
        sd1 = {k: v.clone() for k, v in m.state_dict().items()}
        m.fuse()
        assert torch.equal(m(x)[0], y1)
    sd2 = m.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    mods = list(m.modules())
    assert m.is_fused()
    assert not any(isinstance(x_, (nn.BatchNorm2d, ImplicitA, ImplicitM)) for x_ in mods)
    assert not any(hasattr(x_, b) for x_ in mods for b in TRAIN_BRANCHES)
    assert not any("rbr_" in k or ".bn." in k or "implicit" in k for k in sd2)
    return y0, y1
