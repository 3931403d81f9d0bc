"""Building blocks: YOLOv7's Conv / Concat / MP / SP / SPPCSPC / RepConv / Implicit layers and the
re-parameterizable MobileOne backbone plugin (MobileOneBlock, MobileOne, SEBlock).

Module and attribute names follow YOLOv7 and Apple's MobileOne exactly, so state-dict keys
(``rbr_conv.0.conv.weight``, ``rbr_scale.bn.running_var``, ``rbr_skip.weight``, ``rbr_dense.0.weight``,
``reparam_conv.weight`` ...) match checkpoints of the original code.

Every BatchNorm2d is created with YOLOv7's ``eps=1e-3, momentum=0.03``.

Re-parameterization has one verb and one walker: every block that has a train-time form
(``Conv``, ``RepConv``, ``MobileOneBlock``, and the heads ``Detect`` / ``IDetect`` in models/yolo.py)
defines ``reparameterize()`` (in place, idempotent, returns the block), and
:func:`reparameterize_model` applies it to every such module of a network (``Model.fuse()`` is its
in-place call). A block's forward picks its path from one fact: whether its fused conv exists.
Folding is exact up to rounding: kernels and biases are folded in float64 where the device supports
it (:func:`utils.torch_utils.fuse_bn_tensor`) and cast back to the parameters' dtype.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.branch_sum import _FoldedPointwiseSum, _LeanBranchSum, fold_pointwise, memory_lean
from utils.batchnorm import batch_norm_train, is_plain_batchnorm, tracked_batch_factor, update_running_stats
from utils.torch_utils import conv_like, fold_dtype, fuse_bn_tensor, fuse_conv_and_bn

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def batchnorm(c: int) -> nn.BatchNorm2d:
    """BatchNorm2d with YOLOv7's eps and momentum."""
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def autopad(k: Union[int, Sequence[int]], p: Optional[Union[int, Sequence[int]]] = None):
    """'Same' padding for odd kernels when ``p`` is None (YOLOv7 semantics)."""
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def identity_kernel(channels: int, groups: int, kernel_size: int, like: torch.Tensor) -> torch.Tensor:
    """Kernel of a (grouped) conv that copies its input: a centred 1 per output channel."""
    input_dim = channels // groups
    k = torch.zeros((channels, input_dim, kernel_size, kernel_size), dtype=fold_dtype(like), device=like.device)
    idx = torch.arange(channels, device=like.device)
    k[idx, idx % input_dim, kernel_size // 2, kernel_size // 2] = 1
    return k


# ----------------------------------------------------------------------------- YOLOv7 blocks
class Conv(nn.Module):
    """Conv2d + BatchNorm2d + activation (SiLU by default; ``act`` may be a module or False).

    ``reparameterize()`` folds the BatchNorm into the conv: ``self.bn`` becomes None (the fused
    state) and the conv gets a bias, so state-dict keys become ``conv.weight`` / ``conv.bias``.
    """

    def __init__(self, c1: int, c2: int, k=1, s=1, p=None, g: int = 1, act: Union[bool, nn.Module] = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = batchnorm(c2)
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is None:
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> "Conv":
        """Fold BatchNorm into the conv; idempotent."""
        if self.bn is not None:
            self.conv = fuse_conv_and_bn(self.conv, self.bn)
            self.bn = None
        return self


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension``."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class MP(nn.Module):
    """Max-pool with kernel = stride = k (halves the resolution for k=2)."""

    def __init__(self, k: int = 2):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class SP(nn.Module):
    """'Same' max-pool (stride 1 by default), the SPP building block of yolov7-tiny."""

    def __init__(self, k: int = 3, s: int = 1):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class SPPCSPC(nn.Module):
    """CSP spatial pyramid pooling of YOLOv7 (``n``, ``shortcut``, ``g`` kept for yaml compatibility)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5,
                 k: Sequence[int] = (5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k])
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        y2 = self.cv2(x)
        return self.cv7(torch.cat((y1, y2), dim=1))


class RepConv(nn.Module):
    """RepVGG block of YOLOv7: 3x3 conv+BN, 1x1 conv+BN and a BN identity (when shapes allow).

    ``reparameterize()`` merges them into ``reparam_conv``, one biased conv (named like MobileOne's,
    so a fused model has no ``rbr_*`` left); ``deploy=True`` builds that fused form directly. State
    dicts of YOLOv7's deployed RepConv (``rbr_reparam.weight`` / ``.bias``) load too (renamed on load).
    """

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, p=None, g: int = 1,
                 act: Union[bool, nn.Module] = True, deploy: bool = False):
        super().__init__()
        if k != 3:
            raise ValueError(f"RepConv supports kernel_size 3 only, got {k}")
        self.groups = g
        self.in_channels = c1
        self.out_channels = c2
        self.kernel_size = k
        padding_11 = autopad(k, p) - k // 2
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())
        if deploy:
            self.reparam_conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=True)
        else:
            self.rbr_identity = batchnorm(c1) if (c2 == c1 and s == 1) else None
            self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False), batchnorm(c2))
            self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, padding_11, groups=g, bias=False), batchnorm(c2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "reparam_conv"):
            return self.act(self.reparam_conv(x))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.act(out)

    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel and bias (float64 where possible) of the single conv equal to all branches."""
        k3, b3 = fuse_bn_tensor(self.rbr_dense[0].weight, self.rbr_dense[1])
        k1, b1 = fuse_bn_tensor(self.rbr_1x1[0].weight, self.rbr_1x1[1])
        pad = self.kernel_size // 2
        kernel, bias = k3 + F.pad(k1, [pad, pad, pad, pad]), b3 + b1
        if self.rbr_identity is not None:
            kid, bid = fuse_bn_tensor(identity_kernel(self.in_channels, self.groups, self.kernel_size, k3),
                                      self.rbr_identity)
            kernel, bias = kernel + kid, bias + bid
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> "RepConv":
        """Replace the branches by ``reparam_conv`` (same device and dtype); idempotent."""
        if hasattr(self, "reparam_conv"):
            return self
        kernel, bias = self.get_equivalent_kernel_bias()
        self.reparam_conv = conv_like(self.rbr_dense[0], kernel, bias)
        for name in ("rbr_dense", "rbr_1x1", "rbr_identity"):
            delattr(self, name)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("weight", "bias"):  # YOLOv7 deploy-time name -> ours
            old = f"{prefix}rbr_reparam.{name}"
            if old in state_dict and f"{prefix}reparam_conv.{name}" not in state_dict:
                state_dict[f"{prefix}reparam_conv.{name}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ImplicitA(nn.Module):
    """Learned additive bias per channel (YOLOR implicit knowledge)."""

    def __init__(self, channel: int, mean: float = 0.0, std: float = 0.02):
        super().__init__()
        self.channel = channel
        self.implicit = nn.Parameter(torch.zeros(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit + x


class ImplicitM(nn.Module):
    """Learned multiplicative scale per channel (YOLOR implicit knowledge)."""

    def __init__(self, channel: int, mean: float = 1.0, std: float = 0.02):
        super().__init__()
        self.channel = channel
        self.implicit = nn.Parameter(torch.ones(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit * x


# ----------------------------------------------------------------------------- MobileOne
class SEBlock(nn.Module):
    """Squeeze-and-excite (https://arxiv.org/abs/1709.01507) with a global mean, so any input size
    and ONNX dynamic shapes work."""

    def __init__(self, in_channels: int, rd_ratio: float = 0.0625):
        super().__init__()
        hidden = max(int(in_channels * rd_ratio), 1)
        self.reduce = nn.Conv2d(in_channels, hidden, kernel_size=1, stride=1, bias=True)
        self.expand = nn.Conv2d(hidden, in_channels, kernel_size=1, stride=1, bias=True)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.mean(dim=(2, 3), keepdim=True)
        x = torch.sigmoid(self.expand(F.relu(self.reduce(x))))
        return inputs * x


class MobileOneBlock(nn.Module):
    """MobileOne block (https://arxiv.org/abs/2206.04040).

    Train time: ``num_conv_branches`` parallel conv+BN branches (``rbr_conv``), a 1x1 conv+BN scale
    branch (``rbr_scale``, only when kernel_size > 1) and a BN skip (``rbr_skip``, only when
    in == out and stride == 1), summed, then optional SE and ReLU. ``reparameterize()`` folds all
    branches into one biased conv ``reparam_conv`` with the same output. With
    :func:`set_memory_lean` on, training sums the branches through :class:`_LeanBranchSum`, which
    keeps only the block input for backward.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, use_se: bool = False, num_conv_branches: int = 1,
                 inference_mode: bool = False):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"MobileOneBlock: in_channels {in_channels} and out_channels {out_channels} "
                             f"must be divisible by groups {groups}")
        if num_conv_branches < 1:
            raise ValueError(f"MobileOneBlock: num_conv_branches must be >= 1, got {num_conv_branches}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.num_conv_branches = num_conv_branches
        self.se = SEBlock(out_channels) if use_se else nn.Identity()
        self.activation = nn.ReLU()
        if inference_mode:
            self.reparam_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                          dilation=dilation, groups=groups, bias=True)
        else:
            self.rbr_skip = batchnorm(in_channels) if (out_channels == in_channels and stride == 1) else None
            self.rbr_conv = nn.ModuleList([self._conv_bn(kernel_size, padding) for _ in range(num_conv_branches)])
            self.rbr_scale = self._conv_bn(1, 0) if kernel_size > 1 else None
            self.start_as_identity()

    @torch.no_grad()
    def start_as_identity(self) -> "MobileOneBlock":
        """Zero the BatchNorm gammas of the conv and scale branches of a block that has a BN skip, so the
        freshly built block computes ``ReLU(BN_skip(x))``: the identity path a deep plain stack lacks.

        A sum of k + 2 batch-normalised branches with unit gammas starts with k + 2 times the variance
        of one branch in every block, and a stack of them without a residual path puts almost all of the
        gradient into the first layers (docs/benchmarks.md). Starting every skip block as the identity
        keeps gradients at the scale of a shallow network; the zeroed branches grow from their first
        optimizer step (their gammas get gradient at once). Blocks without a skip (stride 2 or a change
        of width) are left as built. Architecture and fuse are unchanged (a zero gamma folds like any
        other), and loaded weights overwrite this start."""
        if getattr(self, "rbr_skip", None) is not None:
            for branch in [*self.rbr_conv, *([self.rbr_scale] if self.rbr_scale is not None else [])]:
                nn.init.zeros_(branch.bn.weight)
        return self

    def _conv_bn(self, kernel_size: int, padding: int) -> nn.Sequential:
        mod = nn.Sequential()
        mod.add_module("conv", nn.Conv2d(self.in_channels, self.out_channels, kernel_size, stride=self.stride,
                                         padding=padding, groups=self.groups, bias=False))
        mod.add_module("bn", batchnorm(self.out_channels))
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "reparam_conv"):
            return self.activation(self.se(self.reparam_conv(x)))
        if self._foldable(x):
            out = _FoldedPointwiseSum.apply(x, self, *self._branch_params())
        elif self._lean():
            out = _LeanBranchSum.apply(x, self, *self._branch_params())
        else:
            out = self._branch_sum(x)
        return self.activation(self.se(out))

    def _branches(self) -> list[tuple[Optional[nn.Conv2d], nn.BatchNorm2d]]:
        """(conv or None for the skip, BatchNorm) of every train-time branch, in summation order."""
        pairs = [(b.conv, b.bn) for b in self.rbr_conv]
        if self.rbr_scale is not None:
            pairs.append((self.rbr_scale.conv, self.rbr_scale.bn))
        if self.rbr_skip is not None:
            pairs.append((None, self.rbr_skip))
        return pairs

    def _branch_params(self) -> list[torch.Tensor]:
        """The branches' parameters (conv weight, BN weight, BN bias) in a fixed order."""
        return [p for conv, bn in self._branches() for p in (conv.weight if conv is not None else None,
                                                            bn.weight, bn.bias) if p is not None]

    def _branch_sum(self, x: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        """Sum of the branches; ``recompute`` uses batch statistics without updating running ones."""
        out = None
        for conv, bn in self._branches():
            z = conv(x) if conv is not None else x
            y = batch_norm_train(z, None, None, bn.weight, bn.bias, 0.0, bn.eps) if recompute else bn(z)
            out = y if out is None else out + y
        return out

    def _foldable(self, x: torch.Tensor) -> bool:
        """Train this block on the folded pointwise path: enabled, a 1x1 stride-1 ungrouped block in train
        mode outside autocast, float input, and every BatchNorm a plain train-mode BatchNorm2d with running
        statistics (anything else takes the branch-by-branch path). Train-mode forwards without autograd
        (precise BN's cumulative averages, ``momentum=None``) take it too: the same statistics, fewer convs."""
        return (fold_pointwise() and self.kernel_size == 1 and self.stride == 1 and self.padding == 0
                and self.groups == 1 and self.training
                and not torch.jit.is_tracing() and not torch.jit.is_scripting() and x.dim() == 4
                and x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(x.device.type)
                and x.shape[0] * x.shape[2] * x.shape[3] > 1
                and all(is_plain_batchnorm(bn) and bn.training and bn.track_running_stats
                        for _, bn in self._branches()))

    @torch.no_grad()
    def _folded_terms(self, mean: torch.Tensor, cov: torch.Tensor, count: int) -> tuple[list, list, tuple]:
        """For :class:`_FoldedPointwiseSum`: the branches' 2-D weights, per branch (scale, 1/std) with the
        skip last, and (W_eff, sum of betas); updates the running statistics as BatchNorm would."""
        weights, scales = [], []
        w_eff = torch.zeros(self.out_channels, self.in_channels, dtype=cov.dtype, device=cov.device)
        beta = torch.zeros(self.out_channels, dtype=cov.dtype, device=cov.device)
        for conv, bn in self._branches():
            if conv is None:
                mu, var = mean, torch.diagonal(cov)
            else:
                w = conv.weight.reshape(self.out_channels, self.in_channels)
                mu, var = w @ mean, ((w @ cov) * w).sum(1)
                weights.append(w)
            inv_std = torch.rsqrt(var + bn.eps)
            s = bn.weight * inv_std
            if conv is None:
                w_eff.diagonal().add_(s)
            else:
                w_eff.add_(s[:, None] * w)
            beta.add_(bn.bias)
            scales.append((s, inv_std))
            update_running_stats(bn.running_mean, bn.running_var, mu, var, count, tracked_batch_factor(bn))
        return weights, scales, (w_eff, beta)

    def _lean(self) -> bool:
        """Train on the memory-lean path: enabled, training with autograd, and every BatchNorm a plain
        train-mode BatchNorm2d (SyncBatchNorm or frozen statistics take the plain path)."""
        return (memory_lean() and self.training and torch.is_grad_enabled() and not torch.jit.is_tracing()
                and all(is_plain_batchnorm(bn) and bn.training for _, bn in self._branches()))

    @torch.no_grad()
    def get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel and bias (float64 where possible) of the single conv equal to all branches."""
        kernel, bias = None, None
        for branch in self.rbr_conv:
            k, b = fuse_bn_tensor(branch.conv.weight, branch.bn)
            kernel, bias = (k, b) if kernel is None else (kernel + k, bias + b)
        if self.rbr_scale is not None:
            k, b = fuse_bn_tensor(self.rbr_scale.conv.weight, self.rbr_scale.bn)
            pad = self.kernel_size // 2
            kernel, bias = kernel + F.pad(k, [pad, pad, pad, pad]), bias + b
        if self.rbr_skip is not None:
            idk = identity_kernel(self.in_channels, self.groups, self.kernel_size, kernel)
            k, b = fuse_bn_tensor(idk, self.rbr_skip)
            kernel, bias = kernel + k, bias + b
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> "MobileOneBlock":
        """Replace the train-time branches by ``reparam_conv`` (same device and dtype); idempotent."""
        if hasattr(self, "reparam_conv"):
            return self
        kernel, bias = self.get_kernel_bias()
        self.reparam_conv = conv_like(self.rbr_conv[0].conv, kernel, bias)
        for name in ("rbr_conv", "rbr_scale", "rbr_skip"):
            delattr(self, name)
        return self


class MobileOneStage(nn.Module):
    """One MobileOne stage (Apple's ``_make_stage``; Apple's ``MobileOne`` is the whole classifier):
    per block a depthwise 3x3 MobileOneBlock (stride 2 for the first block) then a pointwise 1x1
    MobileOneBlock; SE on both blocks of the last ``num_se`` blocks (when ``use_se``).

    Blocks live in ``self.stage`` (state-dict keys ``stage.<j>.*``, j = 2 * block + 0/1). In a model
    yaml this module is called ``MobileOne`` (the name the original plugin used).
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks_per_stage: int = 2,
                 num_conv_branches: int = 1, use_se: bool = False, num_se: int = 0, inference_mode: bool = False):
        super().__init__()
        if num_blocks_per_stage < 1:
            raise ValueError(f"MobileOne: num_blocks_per_stage must be >= 1, got {num_blocks_per_stage}")
        num_se_blocks = num_se if use_se else 0
        if num_se_blocks > num_blocks_per_stage or num_se_blocks < 0:
            raise ValueError(f"MobileOne: number of SE blocks ({num_se_blocks}) cannot exceed the number of "
                             f"blocks in the stage ({num_blocks_per_stage}) or be negative")
        self.inference_mode = inference_mode
        self.use_se = use_se
        self.num_conv_branches = num_conv_branches
        blocks = []
        c = in_channels
        for ix in range(num_blocks_per_stage):
            stride = 2 if ix == 0 else 1
            se = ix >= num_blocks_per_stage - num_se_blocks
            blocks.append(MobileOneBlock(c, c, 3, stride=stride, padding=1, groups=c, use_se=se,
                                         num_conv_branches=num_conv_branches, inference_mode=inference_mode))
            blocks.append(MobileOneBlock(c, out_channels, 1, stride=1, padding=0, groups=1, use_se=se,
                                         num_conv_branches=num_conv_branches, inference_mode=inference_mode))
            c = out_channels
        self.stage = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(x)

    def reparameterize(self) -> "MobileOneStage":
        """Re-parameterize every block of the stage; idempotent."""
        for block in self.stage:
            block.reparameterize()
        self.inference_mode = True
        return self


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` with every re-parameterizable module folded (timm's protocol: each module that has
    a ``reparameterize()`` method: Conv, RepConv, MobileOneBlock, stages, Detect / IDetect, and
    any user block following it). Works on a deep copy unless ``inplace``; idempotent; exact up to
    rounding; the training/eval mode is left as it is."""
    if not inplace:
        model = copy.deepcopy(model)
    with torch.no_grad():
        for m in list(model.modules()):
            fn = getattr(m, "reparameterize", None)
            if callable(fn):
                fn()
    return model
