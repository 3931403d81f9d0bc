"""Train-mode BatchNorm for channels-last CPU training with batch statistics as accurate as NCHW's.

torch's CPU BatchNorm (2.14; remove this module when its channels-last kernel reduces pairwise as the NCHW one
does) computes the batch mean and variance of a channels-last (NHWC) tensor with plain float32 running sums,
which lose precision with the number of pixels and with a channel's mean against its spread. A MobileOne
network compounds that through ~150 BatchNorms, so its float32 gradients drift several times further from
float64 than in NCHW (figures in docs/benchmarks.md). Here the statistics come from two passes
of torch's pairwise reductions over the (N*H*W, C) view of the tensor (no copy); normalization and
backward stay torch's own kernels.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D tensor laid out NHWC (and not also NCHW-contiguous, as 1x1 maps are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class _ChannelsLastBatchNorm(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with two-pass batch statistics; returns
    (y, mean, biased var). Backward is torch's train-mode BatchNorm backward given those statistics."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
        rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # a view of an NHWC tensor
        mean = rows.mean(0)
        var = (rows - mean).square_().mean(0)
        y = torch.native_batch_norm(x, weight, bias, mean, var, False, 0.0, eps)[0]
        ctx.save_for_backward(x, weight, mean, (var + eps).rsqrt())
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, _grad_mean, _grad_var):
        x, weight, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad_y.contiguous(memory_format=torch.channels_last), x, weight, None, None, mean, invstd, True,
            ctx.eps, [need[0], need[1], need[2]])
        return gx, gw, gb, None


def update_running_stats(running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor,
                         var: torch.Tensor, count: int, factor: float) -> None:
    """Move running statistics by ``factor`` towards a batch's mean and (biased) variance over ``count``
    values per channel, stored unbiased, as torch's BatchNorm does."""
    with torch.no_grad():
        running_mean.lerp_(mean.to(running_mean.dtype), factor)
        running_var.lerp_((var * (count / (count - 1))).to(running_var.dtype), factor)


def tracked_batch_factor(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """Count one more batch on ``bn`` and return its running-average factor: the momentum, or the
    cumulative average 1 / batches when ``momentum`` is None (precise BN)."""
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def batch_norm_train(x: torch.Tensor, running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                     weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], momentum: float,
                     eps: float) -> torch.Tensor:
    """``F.batch_norm(..., training=True, ...)``, with accurate statistics for a channels-last float batch.

    Running statistics (when given) move by ``momentum`` towards the batch mean and unbiased variance,
    as torch's BatchNorm does.
    """
    if not (is_channels_last(x) and weight is not None and bias is not None and x.is_floating_point()
            and x.device.type == "cpu" and not torch.is_autocast_enabled(x.device.type)):
        return F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)
    count = x.numel() // x.shape[1]  # >= 2: a 1x1 map is NCHW-contiguous too and took torch's path above
    y, mean, var = _ChannelsLastBatchNorm.apply(x, weight, bias, eps)
    if running_mean is not None and running_var is not None:
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return y


class ChannelsLastBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose train-mode forward on an NHWC batch uses :func:`batch_norm_train`.

    Same parameters, buffers and state-dict keys; eval mode and NCHW input are the parent's.
    :func:`utils.torch_utils.to_channels_last` gives a model's BatchNorms this class.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and is_channels_last(x)):
            return super().forward(x)
        self._check_input_dim(x)
        factor = tracked_batch_factor(self)
        return batch_norm_train(x, self.running_mean, self.running_var, self.weight, self.bias, factor, self.eps)


def is_plain_batchnorm(m: nn.Module) -> bool:
    """A torch ``BatchNorm2d`` or its channels-last form (not SyncBatchNorm or another subclass)."""
    return type(m) in (nn.BatchNorm2d, ChannelsLastBatchNorm2d)
