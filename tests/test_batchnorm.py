"""utils/batchnorm.py: channels-last train-mode BatchNorm with NCHW-accurate batch statistics."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.batchnorm import ChannelsLastBatchNorm2d, batch_norm_train, is_plain_batchnorm

CL = torch.channels_last


def _bn(c: int, dtype=torch.float32) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=1e-3, momentum=0.03).to(dtype)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


def _run(bn: nn.Module, x: torch.Tensor, gy: torch.Tensor):
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    y = bn(x)
    y.backward(gy)
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean.clone(), bn.running_var.clone()


@pytest.mark.parametrize("shape", [(4, 8, 6, 5), (2, 16, 1, 3), (3, 5, 7, 7)])
def test_same_function_and_gradients_as_torch_batchnorm_fp64(shape):
    """float64: outputs, input/weight/bias gradients and running statistics equal torch's to 1e-10."""
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64) * 2 + 1
    gy = torch.randn(*shape, dtype=torch.float64)
    ref_bn = _bn(shape[1], torch.float64)
    ours = copy.deepcopy(ref_bn)
    ours.__class__ = ChannelsLastBatchNorm2d
    ref = _run(ref_bn, x, gy)
    got = _run(ours, x.contiguous(memory_format=CL), gy.contiguous(memory_format=CL))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert int(ours.num_batches_tracked) == 1


def test_statistics_as_accurate_as_nchw_in_float32():
    """A batch whose mean is large against its spread (where plain float32 sums lose most): the NHWC
    output is within 2x of the NCHW kernel's error against float64, per element."""
    torch.manual_seed(0)
    x64 = torch.randn(16, 32, 24, 24, dtype=torch.float64) * 0.05 + 3.0
    bn64 = _bn(32, torch.float64)
    want = bn64(x64)
    bn = copy.deepcopy(bn64).float()
    err_nchw = (bn(x64.float()).double() - want).abs().max()
    bn_cl = copy.deepcopy(bn64).float()
    bn_cl.__class__ = ChannelsLastBatchNorm2d
    err_cl = (bn_cl(x64.float().contiguous(memory_format=CL)).double() - want).abs().max()
    assert err_cl <= 2 * err_nchw + 1e-7, (err_cl, err_nchw)


def test_cumulative_average_and_eval_mode_match_torch():
    """momentum=None (precise BN's cumulative average) and eval mode behave as nn.BatchNorm2d."""
    torch.manual_seed(1)
    ref = _bn(6)
    ref.momentum = None
    ours = copy.deepcopy(ref)
    ours.__class__ = ChannelsLastBatchNorm2d
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(4, 6, 5, 5) + 2
            ref(x)
            ours(x.contiguous(memory_format=CL))
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    ref.eval(), ours.eval()
    x = torch.randn(2, 6, 4, 4).contiguous(memory_format=CL)
    torch.testing.assert_close(ours(x), ref(x))
    assert ours.state_dict().keys() == ref.state_dict().keys()


def test_nchw_and_single_value_batches_take_torch_path():
    bn = _bn(3)
    bn.__class__ = ChannelsLastBatchNorm2d
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(bn(x), F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps))
    one = torch.randn(1, 3, 1, 1).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_train(torch.randn(1, 3, 2, 1).contiguous(memory_format=CL)[:, :, :1], None, None,
                         bn.weight, bn.bias, 0.1, 1e-3)
    with pytest.raises(ValueError):
        bn(one)


def test_plain_batchnorm_kinds():
    cl = _bn(2)
    cl.__class__ = ChannelsLastBatchNorm2d
    assert is_plain_batchnorm(_bn(2)) and is_plain_batchnorm(cl)
    assert not is_plain_batchnorm(nn.SyncBatchNorm(2)) and not is_plain_batchnorm(nn.BatchNorm1d(2))
