"""Building blocks: shapes, BatchNorm settings and exact re-parameterization of MobileOne / RepConv / Conv."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from model_checks import TRAIN_BRANCHES, randomize_weights, rel_err

from models.branch_sum import fold_pointwise, memory_lean, set_fold_pointwise, set_memory_lean
from models.common import (
    MP,
    SP,
    SPPCSPC,
    Concat,
    Conv,
    ImplicitA,
    ImplicitM,
    MobileOneBlock,
    MobileOneStage,
    RepConv,
    SEBlock,
    autopad,
    reparameterize_model,
)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics / affine parameters and random conv biases, so folding is really tested."""
    return randomize_weights(module, seed, mean_std=0.5, var=(0.25, 1.5), gamma=(0.5, 1.0), beta_std=0.5,
                             implicit_std=0.1, conv_bias_std=0.1)


# (in, out, kernel, stride, groups, use_se, branches)
BLOCK_VARIANTS = [
    (8, 8, 3, 1, 1, False, 1),     # 3x3 with skip, one branch
    (8, 8, 3, 1, 1, False, 4),     # 3x3 with skip, four branches
    (8, 16, 3, 1, 1, False, 4),    # 3x3 no skip (in != out)
    (8, 16, 3, 2, 1, False, 1),    # 3x3 stride 2
    (16, 16, 3, 1, 16, False, 4),  # depthwise 3x3 with skip
    (16, 16, 3, 2, 16, False, 4),  # depthwise 3x3 stride 2 (no skip)
    (8, 8, 3, 1, 2, False, 2),     # grouped
    (8, 8, 1, 1, 1, False, 4),     # pointwise with skip (no scale branch)
    (8, 16, 1, 1, 1, False, 1),    # pointwise without skip
    (8, 8, 1, 2, 1, False, 4),     # pointwise stride 2
    (16, 16, 3, 1, 1, True, 4),    # SE, skip
    (16, 32, 1, 1, 1, True, 1),    # SE, pointwise
    (16, 16, 3, 2, 16, True, 4),   # SE, depthwise stride 2
]


def _block(cin, cout, k, s, g, se, nb, dtype=torch.float32):
    m = MobileOneBlock(cin, cout, k, stride=s, padding=k // 2, groups=g, use_se=se, num_conv_branches=nb)
    return randomize(m.to(dtype), seed=cin * 7 + cout + k + s + g + nb).eval()


@pytest.mark.parametrize("variant", BLOCK_VARIANTS, ids=lambda v: "in%d-out%d-k%d-s%d-g%d-se%d-br%d" % v)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_mobileone_block_reparameterize_exact(variant, dtype, tol):
    cin, cout, k, s, g, se, nb = variant
    m = _block(cin, cout, k, s, g, se, nb, dtype)
    assert (m.rbr_skip is not None) == (cin == cout and s == 1)
    assert (m.rbr_scale is not None) == (k > 1)
    assert len(m.rbr_conv) == nb
    x = torch.randn(2, cin, 13, 11, dtype=dtype)
    with torch.no_grad():
        y0 = m(x)
        m.reparameterize()
        y1 = m(x)
    assert y0.shape == y1.shape == (2, cout, (13 + 2 * (k // 2) - k) // s + 1, (11 + 2 * (k // 2) - k) // s + 1)
    assert rel_err(y0, y1) <= tol
    assert m.reparam_conv.weight.dtype == dtype and m.reparam_conv.bias.dtype == dtype
    for name in TRAIN_BRANCHES:
        assert not hasattr(m, name)
    assert not hasattr(m, "id_tensor")  # nothing cached on the module


def test_mobileone_block_reparameterize_idempotent_and_trainable():
    m = _block(16, 16, 3, 1, 1, True, 4)
    x = torch.randn(1, 16, 8, 8)
    assert m.reparameterize() is m
    sd1 = {k: v.clone() for k, v in m.state_dict().items()}
    m.reparameterize()
    sd2 = m.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert all(k.startswith(("reparam_conv.", "se.")) for k in sd2)
    # parameters were not detached: the fused block can still be fine-tuned
    assert all(p.requires_grad for p in m.parameters())
    m.train()
    m(x).sum().backward()
    assert m.reparam_conv.weight.grad is not None and m.se.reduce.weight.grad is not None


def test_mobileone_block_inference_mode_matches_reparameterized_state():
    src = _block(8, 16, 3, 2, 1, False, 4)
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        y = src(x)
        dst = MobileOneBlock(8, 16, 3, stride=2, padding=1, num_conv_branches=4, inference_mode=True).eval()
        dst.load_state_dict(copy.deepcopy(src).reparameterize().state_dict())
        assert rel_err(y, dst(x)) <= 1e-5


def test_mobileone_block_train_forward_has_no_inplace_alias():
    """The seed summed branches in place on a shared zero; the sum must not depend on call history."""
    m = MobileOneBlock(8, 8, 3, padding=1, num_conv_branches=4).train()
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    y1 = m(x)
    y1.sum().backward()
    y2 = m(x)
    assert torch.allclose(y1, y2)  # BN batch stats are the same for the same batch
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_mobileone_block_reparameterize_keeps_cuda_device():
    m = _block(8, 8, 3, 1, 1, False, 4).cuda()
    x = torch.randn(1, 8, 8, 8, device="cuda")
    with torch.no_grad():
        y0 = m(x)
        m.reparameterize()
        y1 = m(x)
    assert m.reparam_conv.weight.device.type == "cuda"
    assert rel_err(y0, y1) <= 1e-5


def test_mobileone_block_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        MobileOneBlock(6, 8, 3, groups=4)


def test_se_block_any_size_and_value():
    se = SEBlock(32).eval()
    assert se.reduce.out_channels == 2
    for hw in ((5, 7), (16, 16), (1, 1)):
        x = torch.randn(2, 32, *hw)
        y = se(x)
        s = torch.sigmoid(se.expand(torch.relu(se.reduce(x.mean((2, 3), keepdim=True)))))
        assert y.shape == x.shape and torch.allclose(y, x * s)


def test_mobileone_stage_structure_and_se_placement():
    st = MobileOneStage(16, 32, num_blocks_per_stage=3, num_conv_branches=2, use_se=True, num_se=1)
    blocks = list(st.stage)
    assert len(blocks) == 6
    strides = [b.stride for b in blocks]
    assert strides == [2, 1, 1, 1, 1, 1]
    assert [b.kernel_size for b in blocks] == [3, 1] * 3
    assert blocks[0].groups == 16 and blocks[2].groups == 32 and blocks[1].groups == 1
    assert [isinstance(b.se, SEBlock) for b in blocks] == [False, False, False, False, True, True]
    assert all(len(b.rbr_conv) == 2 for b in blocks)
    x = torch.randn(1, 16, 16, 16)
    assert st(x).shape == (1, 32, 8, 8)
    # use_se False disables SE even with num_se > 0 (reference semantics)
    st2 = MobileOneStage(16, 32, 2, use_se=False, num_se=2)
    assert not any(isinstance(b.se, SEBlock) for b in st2.stage)


def test_mobileone_stage_too_many_se_blocks():
    with pytest.raises(ValueError, match=r"\(3\).*\(2\)"):
        MobileOneStage(8, 16, num_blocks_per_stage=2, use_se=True, num_se=3)


def test_reparameterize_model_returns_copy_and_is_exact():
    net = nn.Sequential(MobileOneBlock(3, 16, 3, stride=2, padding=1, num_conv_branches=4),
                        MobileOneStage(16, 32, 2, num_conv_branches=4, use_se=True, num_se=1),
                        RepConv(32, 32, 3, 1))
    randomize(net).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y0 = net(x)
        fused = reparameterize_model(net)
        y1 = fused(x)
        assert torch.equal(net(x), y0)  # input untouched
    assert fused is not net
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert rel_err(y0, y1) <= 1e-5


def test_reparameterize_model_inplace_covers_every_block_and_leaves_no_flags():
    net = nn.Sequential(Conv(3, 8, 3, 2), MobileOneBlock(8, 8, 3, padding=1, num_conv_branches=2),
                        RepConv(8, 8), Conv(8, 8, 1, act=False))
    randomize(net).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        y0 = net(x)
        assert reparameterize_model(net, inplace=True) is net
        assert rel_err(y0, net(x)) <= 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert net[0].bn is None and hasattr(net[1], "reparam_conv") and hasattr(net[2], "reparam_conv")
    for m in net.modules():  # one source of truth for the path: no mode flags on the blocks
        assert not hasattr(m, "deploy") and not hasattr(m, "inference_mode") and not hasattr(m, "fuseforward")
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    reparameterize_model(net, inplace=True)  # idempotent
    assert all(torch.equal(sd[k], v) for k, v in net.state_dict().items())


def test_fused_state_dict_loads_into_blocks_built_fused():
    src = nn.Sequential(MobileOneBlock(8, 8, 3, padding=1, num_conv_branches=3), RepConv(8, 8))
    randomize(src).eval()
    fused = reparameterize_model(src)
    dst = nn.Sequential(MobileOneBlock(8, 8, 3, padding=1, num_conv_branches=3, inference_mode=True),
                        RepConv(8, 8, deploy=True)).eval()
    dst.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        assert torch.equal(dst(x), fused(x))


def test_all_batchnorms_use_yolov7_settings():
    mods = [Conv(3, 8, 3), RepConv(8, 8), MobileOneBlock(8, 8, 3, padding=1, num_conv_branches=2),
            MobileOneStage(8, 16, 2, num_conv_branches=4), SPPCSPC(16, 16)]
    bns = [m for mod in mods for m in mod.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) > 10
    assert all(b.eps == 1e-3 and b.momentum == 0.03 for b in bns)


def test_conv_autopad_shapes_and_activation():
    assert autopad(3) == 1 and autopad(1) == 0 and autopad(5, 0) == 0 and autopad([3, 5]) == [1, 2]
    x = torch.randn(1, 4, 15, 16)
    assert Conv(4, 8, 3, 1)(x).shape == (1, 8, 15, 16)
    assert Conv(4, 8, 3, 2)(x).shape == (1, 8, 8, 8)
    assert isinstance(Conv(4, 8).act, nn.SiLU)
    assert isinstance(Conv(4, 8, act=False).act, nn.Identity)
    assert isinstance(Conv(4, 8, act=nn.LeakyReLU(0.1)).act, nn.LeakyReLU)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_conv_fuse_exact_and_idempotent(dtype, tol):
    m = randomize(Conv(4, 8, 3, 2, act=nn.LeakyReLU(0.1)).to(dtype)).eval()
    x = torch.randn(2, 4, 9, 9, dtype=dtype)
    with torch.no_grad():
        y0 = m(x)
        m.reparameterize()
        y1 = m(x)
        w = m.conv.weight.clone()
        m.reparameterize()
    assert m.bn is None and m.conv.bias is not None and torch.equal(w, m.conv.weight)
    assert m.conv.weight.dtype == dtype
    assert rel_err(y0, y1) <= tol


@pytest.mark.parametrize("c1,c2,s", [(8, 8, 1), (8, 16, 1), (8, 16, 2)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_repconv_fuse_exact(c1, c2, s, dtype, tol):
    m = randomize(RepConv(c1, c2, 3, s).to(dtype)).eval()
    assert (m.rbr_identity is not None) == (c1 == c2 and s == 1)
    x = torch.randn(2, c1, 10, 10, dtype=dtype)
    with torch.no_grad():
        y0 = m(x)
        m.reparameterize()
        y1 = m(x)
        m.reparameterize()
        assert torch.equal(y1, m(x))
    assert rel_err(y0, y1) <= tol
    for name in TRAIN_BRANCHES:
        assert not hasattr(m, name)
    assert set(m.state_dict()) == {"reparam_conv.weight", "reparam_conv.bias"}


def test_repconv_loads_yolov7_deploy_names():
    src = randomize(RepConv(8, 8)).eval().reparameterize()
    sd = {k.replace("reparam_conv", "rbr_reparam"): v for k, v in src.state_dict().items()}
    dst = RepConv(8, 8, deploy=True)
    dst.load_state_dict(sd)
    assert torch.equal(dst.reparam_conv.weight, src.reparam_conv.weight)


def test_pooling_concat_sppcspc_shapes():
    x = torch.randn(1, 8, 16, 12)
    assert MP()(x).shape == (1, 8, 8, 6)
    assert SP(5)(x).shape == x.shape and SP(13)(x).shape == x.shape
    assert Concat(1)([x, x[:, :3]]).shape == (1, 11, 16, 12)
    assert SPPCSPC(8, 16)(x).shape == (1, 16, 16, 12)


def test_implicit_layers():
    a, m = ImplicitA(4), ImplicitM(4)
    x = torch.randn(2, 4, 3, 3)
    assert torch.allclose(a(x), x + a.implicit) and torch.allclose(m(x), x * m.implicit)
    assert abs(float(a.implicit.detach().mean())) < 0.1 and abs(float(m.implicit.detach().mean()) - 1) < 0.1


# ----------------------------------------------------------------------------- memory-lean training
@pytest.fixture
def lean_switch():
    """Restore the process-wide memory-lean setting after the test; 1x1 blocks take the lean path
    (not the folded one, which is tested below) meanwhile."""
    previous, fold = memory_lean(), set_fold_pointwise(False)
    yield
    set_memory_lean(previous)
    set_fold_pointwise(fold)


def _step_both_ways(net: nn.Module, x: torch.Tensor, switch, weights=None):
    """(output, input grad, parameter grads, buffers, grad_fn) after one train step with ``switch(False)``,
    then with ``switch(True)``; the output is weighted by ``weights(y)`` (default: a fixed ramp)."""
    results = []
    for on in (False, True):
        switch(on)
        m = copy.deepcopy(net).train()
        xi = x.detach().clone().requires_grad_(x.requires_grad)
        y = m(xi)
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y) if weights is None else weights(y)
        (y * w).sum().backward()
        results.append((y.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()},
                        {n: b.clone() for n, b in m.named_buffers()}, y.grad_fn))
    return results


def _graph_has(grad_fn, name: str) -> bool:
    """True when the autograd graph behind ``grad_fn`` has a node whose type name contains ``name``."""
    stack, seen = [grad_fn], set()
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        if name in type(f).__name__:
            return True
        stack.extend(g for g, _ in f.next_functions)
    return False


def _lean_vs_plain(net: nn.Module, x: torch.Tensor, weights: torch.Tensor | None = None):
    """One train step plain, then lean (see :func:`_step_both_ways`)."""
    return _step_both_ways(net, x, set_memory_lean, None if weights is None else (lambda y: weights))


def _uses_lean(grad_fn) -> bool:
    return _graph_has(grad_fn, "LeanBranchSum")


@pytest.mark.parametrize("variant", BLOCK_VARIANTS, ids=lambda v: "in%d-out%d-k%d-s%d-g%d-se%d-br%d" % v)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_memory_lean_block_is_exact_in_outputs_gradients_and_running_stats(lean_switch, variant, dtype, tol):
    cin, cout, k, s, g, se, nb = variant
    m = _block(cin, cout, k, s, g, se, nb, dtype)
    x = torch.randn(3, cin, 9, 7, dtype=dtype, requires_grad=True)
    (y0, gx0, gp0, b0, f0), (y1, gx1, gp1, b1, f1) = _lean_vs_plain(m, x)
    assert not _uses_lean(f0) and _uses_lean(f1)
    assert rel_err(y0, y1) <= tol and rel_err(gx0, gx1) <= tol
    assert gp0.keys() == gp1.keys() and len(gp0) == len(list(m.parameters()))
    for name in gp0:
        assert gp1[name] is not None and rel_err(gp0[name], gp1[name]) <= tol, name
    for name in b0:  # running statistics updated exactly once, identically
        assert torch.allclose(b0[name], b1[name], rtol=tol, atol=0), name
    assert int(b1["rbr_conv.0.bn.num_batches_tracked"]) == 1


def test_memory_lean_stage_with_inplace_relu_and_partial_grads(lean_switch):
    net = nn.Sequential(MobileOneBlock(3, 16, 3, stride=2, padding=1, num_conv_branches=4),
                        MobileOneStage(16, 24, 2, num_conv_branches=4, use_se=True, num_se=1))
    for mod in net.modules():  # as in a Model: in-place activations
        if isinstance(mod, nn.ReLU):
            mod.inplace = True
    net[1].stage[0].rbr_conv[1].conv.weight.requires_grad_(False)  # a frozen parameter
    x = torch.randn(2, 3, 16, 16)  # an image batch: no input gradient
    (y0, _, gp0, b0, _), (y1, gx1, gp1, b1, f1) = _lean_vs_plain(net, x)
    assert _uses_lean(f1) and gx1 is None
    assert rel_err(y0, y1) <= 1e-5
    assert gp0["1.stage.0.rbr_conv.1.conv.weight"] is None and gp1["1.stage.0.rbr_conv.1.conv.weight"] is None
    for name, g in gp0.items():
        if g is not None:
            assert rel_err(g, gp1[name]) <= 1e-5, name
    assert all(torch.allclose(b0[n], b1[n], rtol=1e-6, atol=0) for n in b0)


def _saved_bytes(m: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward of ``m``."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    return sum(storages.values())


def test_memory_lean_saves_one_activation_per_block(lean_switch):
    m = MobileOneBlock(16, 16, 3, padding=1, num_conv_branches=4).train()
    x = torch.randn(2, 16, 32, 32)
    act = x.numel() * x.element_size()

    set_memory_lean(False)
    plain = _saved_bytes(m, x)  # input + 5 conv outputs (4 branches + scale) + ReLU output
    set_memory_lean(True)
    lean = _saved_bytes(m, x)  # input + ReLU output
    assert plain >= 7 * act and lean <= 2 * act + 4096


def test_memory_lean_falls_back_when_bn_is_frozen_or_not_training(lean_switch):
    set_memory_lean(True)
    m = _block(8, 8, 3, 1, 1, False, 2).train()
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    assert _uses_lean(m(x).grad_fn)
    m.rbr_conv[0].bn.eval()  # frozen statistics: the plain path reproduces them
    assert not _uses_lean(m(x).grad_fn)
    m.train().eval()
    assert not _uses_lean(m(x).grad_fn)
    with torch.no_grad():
        assert m.train()(x).grad_fn is None
    assert set_memory_lean(False) is True and not memory_lean()


def test_memory_lean_under_cpu_autocast_matches_plain(lean_switch):
    m = _block(8, 16, 3, 1, 1, False, 4)  # no BN skip on the fp32 input: the sum stays bfloat16
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    grads = []
    for lean in (False, True):
        set_memory_lean(lean)
        mi = copy.deepcopy(m).train()
        xi = x.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = mi(xi)
        y.float().square().mean().backward()
        grads.append((y.dtype, xi.grad, mi.rbr_conv[2].conv.weight.grad))
    assert grads[0][0] == grads[1][0] == torch.bfloat16
    assert rel_err(grads[0][1], grads[1][1]) <= 1e-2 and rel_err(grads[0][2], grads[1][2]) <= 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("amp", [False, True])
def test_memory_lean_on_cuda(lean_switch, amp):
    m = _block(16, 16, 3, 1, 16, True, 4).cuda()
    x = torch.randn(4, 16, 20, 20, device="cuda", requires_grad=True)
    out = []
    for lean in (False, True):
        set_memory_lean(lean)
        mi = copy.deepcopy(m).train()
        xi = x.detach().clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            y = mi(xi)
        y.float().square().mean().backward()
        out.append((y.float(), xi.grad, [p.grad for p in mi.parameters()], _uses_lean(y.grad_fn)))
    assert out[1][3] and not out[0][3]
    tol = 2e-3 if amp else 1e-5
    assert rel_err(out[0][0], out[1][0]) <= tol and rel_err(out[0][1], out[1][1]) <= tol
    assert all(rel_err(a, b) <= tol for a, b in zip(out[0][2], out[1][2]))


# ----------------------------------------------------------------------------- folded 1x1 blocks
POINTWISE_VARIANTS = [v for v in BLOCK_VARIANTS if v[2] == 1 and v[3] == 1]


@pytest.fixture
def fold_switch():
    """Restore the process-wide folded-pointwise setting after the test."""
    previous = fold_pointwise()
    yield
    set_fold_pointwise(previous)


def _fold_vs_plain(net: nn.Module, x: torch.Tensor):
    """One train step branch by branch, then folded, with a random output weighting."""
    return _step_both_ways(net, x, set_fold_pointwise, lambda y: torch.randn(
        y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(3)))


def _uses_fold(grad_fn) -> bool:
    return _graph_has(grad_fn, "FoldedPointwiseSum")


@pytest.mark.parametrize("variant", POINTWISE_VARIANTS, ids=lambda v: "in%d-out%d-se%d-br%d" % (v[0], v[1], v[5], v[6]))
@pytest.mark.parametrize("dtype,tol,act", [(torch.float32, 1e-5, False), (torch.float64, 1e-10, True)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_folded_pointwise_block_equals_branch_by_branch(fold_switch, variant, dtype, tol, act, layout):
    """Outputs, input and parameter gradients and running statistics of the folded 1x1 block equal the
    branch-by-branch block, for NCHW and channels-last tensors (whose layout the output and input
    gradient keep). In fp32 the comparison is before the ReLU (float rounding may flip an output
    sitting at 0, which moves a gradient by a whole term); fp64 checks the whole block."""
    cin, cout, k, s, g, se, nb = variant
    m = _block(cin, cout, k, s, g, se, nb, dtype).to(memory_format=layout)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):  # stored statistics away from the batch ones
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    if not act:
        m.activation = nn.Identity()
    x = (torch.randn(3, cin, 9, 7, dtype=dtype) * 2 + 1).contiguous(memory_format=layout).requires_grad_()
    (y0, gx0, gp0, b0, f0), (y1, gx1, gp1, b1, f1) = _fold_vs_plain(m, x)  # x: a non-zero mean input
    assert not _uses_fold(f0) and _uses_fold(f1)
    assert y1.is_contiguous(memory_format=layout) and gx1.is_contiguous(memory_format=layout)
    assert rel_err(y0, y1) <= tol and rel_err(gx0, gx1) <= tol
    assert gp0.keys() == gp1.keys()
    for name in gp0:
        assert gp1[name] is not None and rel_err(gp0[name], gp1[name]) <= tol, name
    for name in b0:
        assert torch.allclose(b0[name].double(), b1[name].double(), rtol=tol, atol=0), name
    assert int(b1["rbr_conv.0.bn.num_batches_tracked"]) == 1


def test_folded_pointwise_stage_trains_like_branch_by_branch(fold_switch):
    """A stage (depthwise blocks plain, 1x1 blocks folded) with in-place ReLU and a frozen branch, fp64."""
    net = nn.Sequential(MobileOneBlock(3, 16, 3, stride=2, padding=1, num_conv_branches=4),
                        MobileOneStage(16, 24, 2, num_conv_branches=4, use_se=True, num_se=1)).double()
    for mod in net.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = True
    net[1].stage[1].rbr_conv[1].conv.weight.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    (y0, _, gp0, b0, _), (y1, gx1, gp1, b1, f1) = _fold_vs_plain(net, x)
    assert _uses_fold(f1) and gx1 is None
    assert rel_err(y0, y1) <= 1e-10
    assert gp1["1.stage.1.rbr_conv.1.conv.weight"] is None
    for name, g in gp0.items():
        if g is not None:
            assert rel_err(g, gp1[name]) <= 1e-10, name
    assert all(torch.allclose(b0[n].double(), b1[n].double(), rtol=1e-10, atol=0) for n in b0)


def test_folded_pointwise_keeps_only_the_input(fold_switch):
    m = MobileOneBlock(16, 16, 1, num_conv_branches=4).train()
    x = torch.randn(2, 16, 32, 32)
    act = x.numel() * x.element_size()

    set_fold_pointwise(False)
    plain = _saved_bytes(m, x)  # input + 4 conv outputs + ReLU output
    set_fold_pointwise(True)
    folded = _saved_bytes(m, x)  # input + ReLU output
    assert plain >= 6 * act and folded <= 2 * act + 4096


def test_folded_pointwise_falls_back_where_it_does_not_apply(fold_switch):
    set_fold_pointwise(True)
    m = _block(8, 8, 1, 1, 1, False, 2).train()
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    assert _uses_fold(m(x).grad_fn)
    assert not _uses_fold(_block(8, 8, 3, 1, 1, False, 2).train()(x).grad_fn)  # 3x3: branch by branch
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # BatchNorm's own error, as unfolded
        m(torch.randn(1, 8, 1, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _uses_fold(m(x).grad_fn)
    m.rbr_conv[0].bn.eval()  # frozen statistics
    assert not _uses_fold(m(x).grad_fn)
    m.train()
    m.rbr_conv[1].bn.momentum = None  # cumulative averaging (precise BN) folds too
    assert _uses_fold(m(x).grad_fn)
    m.rbr_conv[1].bn.momentum = 0.03
    with torch.no_grad():
        assert m(x).grad_fn is None
    assert set_fold_pointwise(False) is True and not fold_pointwise()
    assert not _uses_fold(m(x).grad_fn)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_folded_pointwise_precise_bn_statistics_equal_branch_by_branch(fold_switch, layout, monkeypatch):
    """Precise BN (cumulative averages, no autograd) over a stage: the folded 1x1 blocks give every
    BatchNorm the running statistics and batch count of the branch-by-branch path, and the block's
    train-mode output under no_grad is the same function."""
    import models.branch_sum as branch_sum
    from utils.train_steps import update_bn_stats
    folded_calls = []
    forward = branch_sum._FoldedPointwiseSum.forward
    monkeypatch.setattr(branch_sum._FoldedPointwiseSum, "forward",
                        staticmethod(lambda ctx, *a: folded_calls.append(1) or forward(ctx, *a)))
    torch.manual_seed(0)
    net = nn.Sequential(MobileOneBlock(3, 16, 3, stride=2, padding=1, num_conv_branches=4),
                        MobileOneStage(16, 24, 2, num_conv_branches=4)).to(memory_format=layout)
    batches = [torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8) for _ in range(3)]
    states, outs = [], []
    for fold in (False, True):
        set_fold_pointwise(fold)
        m = copy.deepcopy(net)
        folded_calls.clear()
        assert update_bn_stats(m, batches, torch.device("cpu")) == 3
        assert len(folded_calls) == (3 * 2 if fold else 0)  # the stage's two 1x1 blocks, each batch
        states.append(copy.deepcopy(m.state_dict()))  # (the forward below counts a batch more)
        with torch.no_grad():
            outs.append(m.train()(batches[0].float() / 255))
    for name, v in states[0].items():  # float32 (precise BN feeds float images): rounding only
        assert torch.allclose(v, states[1][name], rtol=1e-4, atol=1e-6), name
    assert int(states[1]["1.stage.3.rbr_conv.0.bn.num_batches_tracked"]) == 3
    assert rel_err(outs[0], outs[1]) <= 1e-5


# ----------------------------------------------------------------------------- identity start
@pytest.mark.parametrize("variant", BLOCK_VARIANTS, ids=lambda v: "in%d-out%d-k%d-s%d-g%d-se%d-br%d" % v)
def test_mobileone_block_with_skip_starts_as_identity(variant):
    cin, cout, k, s, g, se, nb = variant
    torch.manual_seed(0)
    m = MobileOneBlock(cin, cout, k, stride=s, padding=k // 2, groups=g, use_se=se, num_conv_branches=nb).train()
    gammas = [bn.weight for conv, bn in m._branches() if conv is not None]
    if m.rbr_skip is None:  # stride 2 or a change of width: built as before
        assert all(bool((w == 1).all()) for w in gammas)
        return
    assert all(bool((w == 0).all()) for w in gammas)
    assert bool((m.rbr_skip.weight == 1).all())
    x = torch.randn(4, cin, 8, 8)
    skip = nn.BatchNorm2d(cin, eps=m.rbr_skip.eps, momentum=m.rbr_skip.momentum).train()
    assert rel_err(m.se(skip(x)).relu(), m(x)) < 1e-5
    m.reparameterize()  # a zero gamma folds like any other
    assert rel_err(m.se(skip.eval()(x)).relu(), m.eval()(x)) < 1e-4


def _stem_and_head_grads(model: nn.Module) -> tuple[float, float]:
    """L2 norms of the gradient of the first three layers (stem and two stages) and of the head."""
    sq = [0.0, 0.0]
    for name, p in model.named_parameters():
        if p.grad is not None:
            i = int(name.split(".")[1])
            if i <= 2 or i == len(model.model) - 1:
                sq[i > 2] += float(p.grad.double().pow(2).sum())
    return sq[0] ** 0.5, sq[1] ** 0.5


def test_fresh_mobileone_detector_gradient_is_not_concentrated_at_the_input():
    """A freshly built yolov7-tiny-ms0 trains like a shallow network: with every skip block starting as the
    identity, the stem's gradient on this batch is about 10x the head's; with unit gammas in every branch it
    is about 600x (the gradient explosion of a deep plain BatchNorm stack)."""
    from models.yolo import Model
    from utils.loss import ComputeLoss
    from utils.train_steps import scale_loss_gains

    torch.manual_seed(0)
    model = Model("cfg/training/yolov7-tiny-ms0.yaml", nc=4, verbose=False).train()
    hyp = {"box": 0.05, "cls": 0.5, "obj": 1.0, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0,
           "label_smoothing": 0.0}
    scale_loss_gains(hyp, 3, 4, 96)
    model.hyp, model.gr = hyp, 1.0
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(8, 3, 96, 96, generator=g)
    targets = torch.tensor([[i, i % 4, 0.3 + 0.05 * i, 0.5, 0.3, 0.25] for i in range(8)])
    ComputeLoss(model)(model(imgs), targets)[0].backward()
    stem, head = _stem_and_head_grads(model)
    assert 0 < stem < 40 * head, (stem, head)
