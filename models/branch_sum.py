"""Training-time sums of a MobileOneBlock's parallel branches that hold less memory than plain autograd.

Two process-wide switches, both exact in outputs, gradients and BatchNorm running statistics:

- memory-lean (:func:`set_memory_lean`, off by default, ``train.py --memory-lean``): :class:`_LeanBranchSum` keeps
  only the block input for backward and recomputes the branches there;
- folded pointwise (:func:`set_fold_pointwise`, on by default): a 1x1 block's branches are one matrix product,
  their BatchNorm statistics come from the input's channel covariance (:class:`_FoldedPointwiseSum`).

The block itself (which path applies, the branch parameters these functions take) is
:class:`models.common.MobileOneBlock`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- memory-lean training
_MEMORY_LEAN = False


def set_memory_lean(enabled: bool) -> bool:
    """Turn the memory-lean training path of every MobileOneBlock on or off (process-wide, off by
    default); returns the previous setting. Outputs, gradients and BatchNorm running statistics are
    the same either way. Lean keeps one activation per block for backward instead of one per branch
    plus the output, and pays for it with one more forward pass of the branches during backward."""
    global _MEMORY_LEAN
    previous, _MEMORY_LEAN = _MEMORY_LEAN, bool(enabled)
    return previous


def memory_lean() -> bool:
    """Whether MobileOneBlocks train on the memory-lean path (see :func:`set_memory_lean`)."""
    return _MEMORY_LEAN


def _autocast_state(device_type: str) -> dict:
    """The current autocast settings of ``device_type``, as ``torch.autocast`` keyword arguments."""
    return {"device_type": device_type, "enabled": torch.is_autocast_enabled(device_type),
            "dtype": torch.get_autocast_dtype(device_type), "cache_enabled": torch.is_autocast_cache_enabled()}


class _LeanBranchSum(torch.autograd.Function):
    """Sum of a MobileOneBlock's train-time branches that saves only the block input for backward.

    Forward runs the branch modules without a graph (BatchNorm in train mode: batch statistics, running
    statistics updated exactly once). Backward rebuilds the branches from the saved input with the same
    batch statistics but without touching the running buffers, and back-propagates ``grad_out``
    through them, so outputs and gradients are the plain block's. The autocast state of the forward is
    restored in backward (what ``torch.amp.custom_fwd`` / ``custom_bwd`` do, for the input's device).
    ``params`` are passed only so that autograd routes their gradients (DDP hooks, AMP scaling).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: nn.Module, *params: torch.Tensor) -> torch.Tensor:
        ctx.block = block
        ctx.autocast = _autocast_state(x.device.type)
        ctx.save_for_backward(x)
        return block._branch_sum(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        block, needs = ctx.block, ctx.needs_input_grad
        params = block._branch_params()
        wanted = [i for i, p in enumerate(params) if needs[2 + i]]
        xd = x.detach().requires_grad_(needs[0])
        inputs = ([xd] if needs[0] else []) + [params[i] for i in wanted]
        grads = [None] * len(params)
        grad_x = None
        if inputs:
            with torch.enable_grad(), torch.autocast(**ctx.autocast):
                out = block._branch_sum(xd, recompute=True)
            got = list(torch.autograd.grad(out, inputs, grad_out, allow_unused=True))
            grad_x = got.pop(0) if needs[0] else None
            for i, g in zip(wanted, got):
                grads[i] = g
        return (grad_x, None, *grads)


# ----------------------------------------------------------------------------- folded pointwise training
_FOLD_POINTWISE = True


def set_fold_pointwise(enabled: bool) -> bool:
    """Turn the folded training path of 1x1 MobileOneBlocks on (the default) or off, process-wide;
    returns the previous setting. See :class:`_FoldedPointwiseSum`."""
    global _FOLD_POINTWISE
    previous, _FOLD_POINTWISE = _FOLD_POINTWISE, bool(enabled)
    return previous


def fold_pointwise() -> bool:
    """Whether 1x1 MobileOneBlocks train on the folded path (see :func:`set_fold_pointwise`)."""
    return _FOLD_POINTWISE


def _pixel_gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum over n, h, w of a[n, :, h, w] b[n, :, h, w]^T``, shape (Ca, Cb), for NCHW or channels-last batches.

    Channels-last tensors are read as (NHW, C) row matrices (a view, no copy); anything else as batched
    (N, C, HW) matrices.
    """
    if a.is_contiguous(memory_format=torch.channels_last) and b.is_contiguous(memory_format=torch.channels_last):
        return a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]).t() @ b.permute(0, 2, 3, 1).reshape(-1, b.shape[1])
    n = a.shape[0]
    return torch.matmul(a.reshape(n, a.shape[1], -1), b.reshape(n, b.shape[1], -1).transpose(1, 2)).sum(0)


def _conv1x1(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``w @ x`` per pixel (+ bias) as a 1x1 convolution: a fresh tensor in ``x``'s memory format."""
    return F.conv2d(x, w[:, :, None, None], bias)


class _FoldedPointwiseSum(torch.autograd.Function):
    """Sum of a 1x1 MobileOneBlock's train-time branches as one conv, with every branch's batch statistics.

    Branch b is ``BN_b(W_b x)``. Its batch mean and variance follow from the input's moments:
    ``mu_b = W_b m`` and ``var_b = diag(W_b C W_b^T)`` (m, C: the input's per-channel mean and
    covariance over N, H, W). So the sum is the single 1x1 conv ``W_eff (x - m) + sum_b beta_b`` with
    ``W_eff = sum_b s_b W_b`` and ``s_b = gamma_b / sqrt(var_b + eps)`` (the BN skip adds
    ``diag(s_skip)``): the same function as the branch-by-branch block, at two GEMMs of the block's
    size in forward instead of one per branch plus a BatchNorm per branch. Backward is written out
    (three GEMMs), and only the input is kept for it. Running statistics are updated as BatchNorm does
    (momentum or, with ``momentum=None``, the cumulative average; unbiased variance). Results equal the
    plain block up to float rounding. NCHW and channels-last inputs both work; the output and the input
    gradient keep the input's memory format.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: nn.Module, *params: torch.Tensor) -> torch.Tensor:
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean = x.mean(dim=(0, 2, 3))
        xc = x - mean[None, :, None, None]
        cov = _pixel_gram(xc, xc) / count
        weights, scales, (w_eff, beta) = block._folded_terms(mean, cov, count)
        ctx.save_for_backward(x)
        ctx.block, ctx.stats = block, (mean, cov, weights, scales, w_eff)
        return _conv1x1(xc, w_eff, beta)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        block = ctx.block
        mean, cov, weights, scales, w_eff = ctx.stats
        count = x.shape[0] * x.shape[2] * x.shape[3]
        xc = x - mean[None, :, None, None]
        g_sum = grad_out.sum(dim=(0, 2, 3))
        g_weff = _pixel_gram(grad_out, xc)  # (Co, Ci)
        g_cov = torch.zeros_like(cov)
        grads = []  # per branch: (conv weight | None for the skip, bn weight, bn bias)
        for w_b, (s_b, inv_std) in zip(weights + [None], scales):
            if w_b is None:  # BN skip: identity kernel, variance = diag(cov)
                g_s = torch.diagonal(g_weff)
            else:
                g_s = (g_weff * w_b).sum(1)
            g_var = -0.5 * g_s * s_b * inv_std * inv_std
            if w_b is None:
                g_cov = g_cov + torch.diag(g_var)
                grads.append((None, g_s * inv_std, g_sum))
            else:
                g_w = s_b[:, None] * g_weff + 2 * g_var[:, None] * (w_b @ cov)
                g_cov = g_cov + (w_b.t() * g_var) @ w_b
                grads.append((g_w, g_s * inv_std, g_sum))
        grad_x = None
        if ctx.needs_input_grad[0]:
            a = (g_cov + g_cov.t()) / count
            w_t = w_eff.t().contiguous()
            # W_eff^T (g - mean(g)) + A (x - m): the mean m is a function of x too
            grad_x = _conv1x1(xc, a, -(w_t @ g_sum) / count).add_(_conv1x1(grad_out, w_t))
        flat = []
        for (g_w, g_gamma, g_beta), (conv, _) in zip(grads, block._branches()):
            if conv is not None:
                flat.append(g_w.reshape(conv.weight.shape))
            flat += [g_gamma, g_beta.clone()]
        return (grad_x, None, *flat)
