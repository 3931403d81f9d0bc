"""Pretrained weights: Apple MobileOne import (names, shapes, BN eps), YOLOv7 pickle conversion,
and refusal of pickled code by every loader."""
from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.checkpoint import CheckpointError, load_checkpoint
from weights import convert_mobileone as cm
from weights import convert_yolov7 as cy

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "cfg" / "training" / "yolov7-tiny-ms0.yaml"
APPLE_EPS, OUR_EPS = 1e-5, 1e-3
S0_WIDTHS = (48, 48, 128, 256, 1024)  # stage0..stage4 output channels of Apple's MobileOne-S0
S0_BLOCKS = (2, 8, 10, 1)
# Apple's mobileone(variant=...) as its paper code builds it: width multipliers of stages 1-4,
# conv branches per block (stage 0 always has 1), SE blocks {stage: that many final blocks}.
APPLE_MULTIPLIERS = {"s0": ((0.75, 1.0, 1.0, 2.0), 4, {}), "s1": ((1.5, 1.5, 2.0, 2.5), 1, {}),
                     "s2": ((1.5, 2.0, 2.5, 4.0), 1, {}), "s3": ((2.0, 2.5, 3.0, 4.0), 1, {}),
                     "s4": ((3.0, 3.5, 3.5, 4.0), 1, {3: 5, 4: 1})}
VARIANT_CFG = {"s0": "yolov7-tiny-ms0-full.yaml", "s1": "yolov7-tiny-ms1.yaml", "s2": "yolov7-tiny-ms2.yaml",
               "s3": "yolov7-tiny-ms3.yaml", "s4": "yolov7-tiny-ms4.yaml"}


def apple_variant(name: str) -> dict:
    """widths (stage0 = min(64, 64 w1), then 64 w1, 128 w2, 256 w3, 512 w4), branches, se of a variant."""
    w, branches, se = APPLE_MULTIPLIERS[name]
    widths = (min(64, int(64 * w[0])), int(64 * w[0]), int(128 * w[1]), int(256 * w[2]), int(512 * w[3]))
    return {"widths": widths, "blocks": S0_BLOCKS, "branches": branches, "se": se}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- Apple-format generator
def apple_block_specs(widths=S0_WIDTHS, blocks=S0_BLOCKS, se=None, branches=4):
    """(prefix, c_in, c_out, k, stride, groups, branches, use_se) of every MobileOneBlock of Apple's
    classifier, in forward order: stage0 (1 branch), then per stage depthwise 3x3 + pointwise 1x1;
    ``se`` = {stage: number of final blocks with SE} (Apple's S4 uses SE)."""
    specs = [("stage0", 3, widths[0], 3, 2, 1, 1, False)]
    c = widths[0]
    for n, nb in enumerate(blocks, start=1):
        for ix in range(nb):
            use_se = ix >= nb - (se or {}).get(n, 0)
            specs.append((f"stage{n}.{2 * ix}", c, c, 3, 2 if ix == 0 else 1, c, branches, use_se))
            specs.append((f"stage{n}.{2 * ix + 1}", c, widths[n], 1, 1, 1, branches, use_se))
            c = widths[n]
    return specs


def make_apple_state_dict(widths=S0_WIDTHS, blocks=S0_BLOCKS, seed=0, fused=False, se=None, branches=4):
    """Apple-named random MobileOne state dict (unfused: conv+BN branches with small running
    variances so a BatchNorm eps mismatch shows; fused: one biased ``reparam_conv`` per block)."""
    g = torch.Generator().manual_seed(seed)

    def bn(p, c):  # gain about 0.1-0.3 per branch keeps 40 blocks well-conditioned
        var = 1e-4 + 5e-3 * torch.rand(c, generator=g)
        return {f"{p}.weight": (0.1 + 0.2 * torch.rand(c, generator=g)) * var.sqrt(),
                f"{p}.bias": 0.05 * torch.randn(c, generator=g),
                f"{p}.running_mean": 0.05 * torch.randn(c, generator=g), f"{p}.running_var": var,
                f"{p}.num_batches_tracked": torch.tensor(1000)}

    def conv(c_out, c_in_g, k):
        return torch.randn(c_out, c_in_g, k, k, generator=g) * (2.0 / (c_in_g * k * k)) ** 0.5

    sd = {}
    for p, ci, co, k, s, gr, nbr, use_se in apple_block_specs(widths, blocks, se, branches):
        if use_se:
            hid = int(co * 0.0625)  # Apple's SE reduction ratio
            sd[f"{p}.se.reduce.weight"] = conv(hid, co, 1)
            sd[f"{p}.se.reduce.bias"] = 0.1 * torch.randn(hid, generator=g)
            sd[f"{p}.se.expand.weight"] = conv(co, hid, 1)
            sd[f"{p}.se.expand.bias"] = 0.1 * torch.randn(co, generator=g)
        if fused:
            sd[f"{p}.reparam_conv.weight"] = conv(co, ci // gr, k)
            sd[f"{p}.reparam_conv.bias"] = 0.1 * torch.randn(co, generator=g)
            continue
        if ci == co and s == 1:
            sd.update(bn(f"{p}.rbr_skip", ci))
        for b in range(nbr):
            sd[f"{p}.rbr_conv.{b}.conv.weight"] = conv(co, ci // gr, k)
            sd.update(bn(f"{p}.rbr_conv.{b}.bn", co))
        if k > 1:
            sd[f"{p}.rbr_scale.conv.weight"] = conv(co, ci // gr, 1)
            sd.update(bn(f"{p}.rbr_scale.bn", co))
    sd["linear.weight"] = torch.randn(1000, widths[-1], generator=g) * 0.01
    sd["linear.bias"] = torch.zeros(1000)
    return {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}  # Apple-like storage


def _conv(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, groups: int) -> torch.Tensor:
    """conv2d; 1x1 and depthwise ones written as a matrix product / a sum of shifted slices
    (PyTorch's float64 CPU kernels for them are very slow)."""
    if groups == 1 and w.shape[-1] == 1 and padding == 0:
        return torch.einsum("oc,bchw->bohw", w[:, :, 0, 0], x[:, :, ::stride, ::stride])
    if groups == 1 or w.shape[1] != 1 or groups != x.shape[1]:
        return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)
    k = w.shape[-1]
    xp = F.pad(x, [padding] * 4)
    ho, wo = (xp.shape[2] - k) // stride + 1, (xp.shape[3] - k) // stride + 1
    return sum(xp[:, :, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride]
               * w[:, 0, dy, dx].view(1, -1, 1, 1) for dy in range(k) for dx in range(k))


def apple_reference_stages(sd, x, widths=S0_WIDTHS, blocks=S0_BLOCKS, eps=APPLE_EPS, upto=4, se=None, branches=4,
                           dtype=torch.float32):
    """Apple's forward (sum of conv+BN branches, scale, skip; SE; ReLU) written from the state dict,
    returning each stage's output: the ground truth for the BN-eps compensation."""
    sd = {k: v.to(dtype) for k, v in sd.items()}
    x = x.to(dtype)

    def bn(t, p):  # eval-mode BatchNorm
        def v(name):
            return sd[f"{p}.{name}"].view(1, -1, 1, 1)
        return (t - v("running_mean")) / torch.sqrt(v("running_var") + eps) * v("weight") + v("bias")

    outs = {}
    for p, _ci, _co, k, s, gr, nbr, use_se in apple_block_specs(widths, blocks, se, branches):
        stage = p.split(".")[0]
        if int(stage[5:]) >= upto:
            break
        y = sum(bn(_conv(x, sd[f"{p}.rbr_conv.{b}.conv.weight"], s, k // 2, gr), f"{p}.rbr_conv.{b}.bn")
                for b in range(nbr))
        if k > 1:
            y = y + bn(_conv(x, sd[f"{p}.rbr_scale.conv.weight"], s, 0, gr), f"{p}.rbr_scale.bn")
        if f"{p}.rbr_skip.weight" in sd:
            y = y + bn(x, f"{p}.rbr_skip")
        if use_se:
            a = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), sd[f"{p}.se.reduce.weight"], sd[f"{p}.se.reduce.bias"]))
            y = y * torch.sigmoid(F.conv2d(a, sd[f"{p}.se.expand.weight"], sd[f"{p}.se.expand.bias"]))
        x = F.relu(y)
        outs[stage] = x
    return outs


def expected_target_key(apple_key: str) -> str:
    """The documented mapping for yolov7-tiny-ms0 (layer 0 = stage0, layer n = stage n)."""
    stage, rest = apple_key.split(".", 1)
    n = int(stage[5:])
    return f"model.0.{rest}" if n == 0 else f"model.{n}.stage.{rest}"


def backbone_features(model, x, upto=4):
    outs = {}
    with torch.no_grad():
        for i in range(upto):
            x = model.model[i](x)
            outs[f"stage{i}"] = x
    return outs


@pytest.fixture(scope="module")
def apple_sd():
    return make_apple_state_dict()


@pytest.fixture(scope="module")
def base_model():
    """One freshly initialised yolov7-tiny-ms0 (building is slow on 2 cores: tests copy it)."""
    torch.manual_seed(0)
    return cm.build_model(CFG).eval()


@pytest.fixture(scope="module")
def converted(apple_sd, base_model):
    ckpt, report, model = cm.convert_mobileone(apple_sd, model=copy.deepcopy(base_model), src_name="generated")
    return ckpt, report, model.eval()


# --------------------------------------------------------------------------- mapping, no ../shared
def test_every_mapped_tensor_and_bn_compensation(apple_sd, converted):
    ckpt, report, model = converted
    sd = ckpt["state_dict"]
    loaded_src = [k for k in apple_sd if k.split(".")[0] in ("stage0", "stage1", "stage2", "stage3")]
    assert set(sd) == {expected_target_key(k) for k in loaded_src}
    assert sorted(report.loaded) == sorted(sd)
    n_bn_w = 0
    mods = dict(model.named_modules())
    for k in loaded_src:
        t = sd[expected_target_key(k)]
        src = apple_sd[k]
        if k.endswith("num_batches_tracked"):
            assert t.dtype == torch.int64 and int(t) == int(src)
            continue
        assert t.dtype == torch.float32
        owner, leaf = expected_target_key(k).rsplit(".", 1)
        if isinstance(mods[owner], nn.BatchNorm2d) and leaf == "weight":
            var = apple_sd[k[: -len("weight")] + "running_var"].double()
            want = src.double() * torch.sqrt(var + OUR_EPS) / torch.sqrt(var + APPLE_EPS)
            assert mods[owner].eps == OUR_EPS
            torch.testing.assert_close(t, want.float(), rtol=1e-6, atol=0)
            assert not torch.allclose(t, src.float(), rtol=1e-3)  # the rescaling really happened
            n_bn_w += 1
        else:
            assert torch.equal(t, src.float()), k
    assert n_bn_w == len(report.bn_compensated) > 0
    # every checkpoint tensor is in the model that came back
    msd = model.state_dict()
    assert all(torch.equal(msd[k], v) for k, v in sd.items())


def test_generated_stages_match_apple_forward(apple_sd, converted, base_model):
    _, _, model = converted
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ref = apple_reference_stages(apple_sd, x)
    ours = backbone_features(model, x)
    for s in ("stage0", "stage1", "stage2", "stage3"):
        assert ours[s].shape == ref[s].shape
        assert rel_err(ours[s], ref[s]) <= 1e-4, s
    # without the eps compensation the same weights do not reproduce Apple (the test can fail)
    _, _, raw = cm.convert_mobileone(apple_sd, model=copy.deepcopy(base_model), src_eps=OUR_EPS)
    raw_out = backbone_features(raw.eval(), x)
    assert max(rel_err(raw_out[s], ref[s]) for s in ref) > 1e-3


def test_s0_stage4_reported_not_loaded(converted):
    ckpt, report, _ = converted
    status = {s.stage: s.loaded for s in report.stages}
    assert status == {0: True, 1: True, 2: True, 3: True, 4: False}
    assert report.mismatched and all(s.startswith("stage4.1.") for s, *_ in report.mismatched)
    assert ("stage4.1.rbr_conv.0.conv.weight", "model.4.stage.1.rbr_conv.0.conv.weight",
            (1024, 256, 1, 1), (512, 256, 1, 1)) in report.mismatched
    assert set(report.unused) == {"linear.weight", "linear.bias"}
    assert not any(k.startswith("model.4.") for k in ckpt["state_dict"])
    table = report.table()
    assert "NOT loaded" in table and "stage4.1.rbr_conv.0.conv.weight" in table
    for row in ("loaded", "shape mismatch", "missing", "unused"):
        assert row in table
    # training checkpoint format
    for key, val in (("epoch", -1), ("best_fitness", 0.0), ("fused", False), ("nc", 80)):
        assert ckpt[key] == val
    assert ckpt["cfg"]["backbone"][1][2] == "MobileOne" and len(ckpt["names"]) == 80


def test_mismatched_stage_left_at_init(base_model):
    widths = (48, 48, 128, 320, 1024)  # stage3 wider than the yaml's 256
    sd = make_apple_state_dict(widths=widths, seed=3)
    fresh = copy.deepcopy(base_model)
    ckpt, report, model = cm.convert_mobileone(sd, model=copy.deepcopy(base_model), src_name="wide-stage3")
    status = {s.stage: s.loaded for s in report.stages}
    assert status == {0: True, 1: True, 2: True, 3: False, 4: False}
    assert ("stage3.1.rbr_conv.0.conv.weight", "model.3.stage.1.rbr_conv.0.conv.weight",
            (320, 128, 1, 1), (256, 128, 1, 1)) in report.mismatched
    assert "stage3.0.rbr_conv.0.conv.weight" in report.skipped  # shape fits, but its stage is not loaded
    got, init = model.state_dict(), fresh.state_dict()
    layer3 = [k for k in init if k.startswith("model.3.")]
    assert layer3 and all(torch.equal(got[k], init[k]) for k in layer3)
    assert not any(k.startswith(("model.3.", "model.4.")) for k in ckpt["state_dict"])
    assert torch.equal(got["model.2.stage.0.rbr_conv.0.conv.weight"], sd["stage2.0.rbr_conv.0.conv.weight"].float())


def test_wrapped_and_prefixed_sources_give_same_tensors(apple_sd, tmp_path):
    small = {k: v for k, v in apple_sd.items() if k.startswith("stage0.")}
    wrapped = [small, {"state_dict": small}, {"model": {f"module.{k}": v for k, v in small.items()}},
               {"state_dict": {f"module.{k}": v for k, v in small.items()}, "epoch": 3}]
    for i, obj in enumerate(wrapped):
        p = tmp_path / f"w{i}.pth.tar"
        torch.save(obj, p, _use_new_zipfile_serialization=(i % 2 == 0))  # both serialization formats
        got = cm.load_apple_state_dict(p)
        assert list(got) == list(small) and all(torch.equal(got[k], small[k]) for k in small)
    with pytest.raises(cm.ConversionError, match="not a state dict"):
        cm.extract_state_dict({"epoch": 3}, "x.pt")


def test_cli_writes_loadable_checkpoint(apple_sd, tmp_path, capsys):
    src = tmp_path / "mobileone_s0_unfused.pth.tar"
    torch.save(apple_sd, src)
    out = tmp_path / "bb.pt"
    assert cm.main(["--src", str(src), "--cfg", str(CFG), "--out", str(out), "--nc", "3"]) == 0
    text = capsys.readouterr().out
    assert "shape mismatch" in text and "stage4.1.rbr_conv.0.conv.weight" in text and "linear" in text
    ck = load_checkpoint(out)
    assert ck["nc"] == 3 and ck["cfg"]["nc"] == 3 and ck["fused"] is False and ck["format"]
    assert all(k.startswith(("model.0.", "model.1.", "model.2.", "model.3.")) for k in ck["state_dict"])


def _apple_names_from_model(model) -> dict:
    """Our backbone state dict renamed to Apple's names (inverse of the mapping)."""
    out = {}
    for k, v in model.state_dict().items():
        parts = k.split(".")
        i = int(parts[1])
        if i == 0:
            out["stage0." + ".".join(parts[2:])] = v.clone()
        elif 1 <= i <= 4 and parts[2] == "stage":
            out[f"stage{i}." + ".".join(parts[3:])] = v.clone()
    return out


def test_fused_apple_checkpoint_refused_unless_target_fused(base_model, tmp_path, capsys):
    src_model = copy.deepcopy(base_model).eval()
    for m in src_model.modules():  # distinct BN statistics, so the fused weights are not the init's
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.1, 0.1)
    src_model.fuse()
    fused_sd = _apple_names_from_model(src_model)
    assert any(".reparam_conv." in k for k in fused_sd) and not any(".rbr_" in k for k in fused_sd)
    fused_sd["linear.weight"] = torch.zeros(1000, 512)
    assert cm.is_fused_apple(fused_sd)
    p = tmp_path / "mobileone_s0.pth.tar"
    torch.save(fused_sd, p)
    out = tmp_path / "o.pt"
    assert cm.main(["--src", str(p), "--cfg", str(CFG), "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "fused" in err and "unfused" in err and "--fused" in err
    assert not out.exists()
    # a fused target takes it
    with pytest.raises(cm.ConversionError, match="fused"):
        cm.convert_mobileone(fused_sd, model=copy.deepcopy(base_model))
    ck, report, model = cm.convert_mobileone(fused_sd, model=copy.deepcopy(base_model), fused=True)
    assert ck["fused"] is True and "stride" in ck and all(s.loaded for s in report.stages)
    assert not report.bn_compensated and set(report.unused) == {"linear.weight"}
    msd = model.state_dict()
    assert set(ck["state_dict"]) == set(msd) and all(torch.equal(v, msd[k]) for k, v in ck["state_dict"].items())
    x = torch.rand(1, 3, 64, 64)
    a, b = backbone_features(model, x, 5), backbone_features(src_model, x, 5)
    assert all(torch.equal(a[s], b[s]) for s in a)


def test_unfused_source_into_fused_target(apple_sd, base_model):
    ckpt, report, model = cm.convert_mobileone(apple_sd, model=copy.deepcopy(base_model), fused=True)
    assert ckpt["fused"] and not any(".rbr_" in k for k in ckpt["state_dict"])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ref = apple_reference_stages(apple_sd, x)
    ours = backbone_features(model.eval(), x)
    for s in ref:
        assert rel_err(ours[s], ref[s]) <= 1e-4, s


def test_se_stage_and_custom_backbone():
    """SE weights (Apple's S4 style) map too; a small yaml whose stage 4 matches loads all 5 stages."""
    cfg = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0,
           "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
           "backbone": [[-1, 1, "MobileOneBlock", [48, 3, 2, 1]], [-1, 1, "MobileOne", [48, 2, 4, False, 0]],
                        [-1, 1, "MobileOne", [128, 8, 4, False, 0]], [-1, 1, "MobileOne", [256, 10, 4, True, 5]],
                        [-1, 1, "MobileOne", [512, 1, 4, True, 1]]],
           "head": [[[2, 3, 4], 1, "IDetect", ["nc", "anchors"]]]}
    widths, se = (48, 48, 128, 256, 512), {3: 5, 4: 1}
    sd = make_apple_state_dict(widths=widths, seed=5, se=se)
    assert "stage3.19.se.expand.weight" in sd and "stage3.9.se.reduce.bias" not in sd
    ckpt, report, model = cm.convert_mobileone(sd, cfg, src_name="se")
    assert all(s.loaded for s in report.stages) and set(report.unused) == {"linear.weight", "linear.bias"}
    assert torch.equal(ckpt["state_dict"]["model.4.stage.1.se.reduce.weight"], sd["stage4.1.se.reduce.weight"].float())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    ref = apple_reference_stages(sd, x, widths=widths, upto=5, se=se)
    ours = backbone_features(model.eval(), x, upto=5)
    for s in ref:
        assert rel_err(ours[s], ref[s]) <= 1e-4, s


# --------------------------------------------------------------------------- the family: S0 (full) .. S4
def test_variant_table_matches_apple_facts():
    assert cm.APPLE_VARIANTS == {v: (apple_variant(v)["widths"], VARIANT_CFG[v]) for v in APPLE_MULTIPLIERS}
    assert apple_variant("s0")["widths"] == S0_WIDTHS
    assert cm.detect_variant({"stage0.rbr_conv.0.conv.weight": torch.zeros(32, 3, 3, 3)}) is None


@pytest.mark.parametrize("variant", list(APPLE_MULTIPLIERS))
def test_every_apple_tensor_loads_and_reproduces_stages(variant):
    """Each variant's Apple-format state dict fills the whole backbone of its yaml (nothing missing,
    mismatched or skipped; only the classifier unused) and reproduces Apple's stage outputs."""
    v = apple_variant(variant)
    sd = make_apple_state_dict(v["widths"], v["blocks"], seed=10, se=v["se"], branches=v["branches"])
    assert cm.detect_variant(sd) == variant
    torch.manual_seed(0)
    ckpt, report, model = cm.convert_mobileone(sd, VARIANT_CFG[variant], nc=3, src_name=variant)
    assert [s.loaded for s in report.stages] == [True] * 5
    assert not report.missing and not report.mismatched and not report.skipped
    assert set(report.unused) == {"linear.weight", "linear.bias"}
    backbone = {k for k in model.state_dict() if int(k.split(".")[1]) < 5}
    assert set(ckpt["state_dict"]) == backbone == set(report.loaded)
    assert len(backbone) == len(sd) - 2
    if v["se"]:  # SE exactly where Apple puts it: the last 5 blocks of stage 3 and all of stage 4
        assert "model.3.stage.10.se.reduce.weight" in backbone and "model.3.stage.9.se.reduce.weight" not in backbone
        assert "model.4.stage.0.se.expand.bias" in backbone
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    ref = apple_reference_stages(sd, x, upto=5, dtype=torch.float64, **v)
    ours = backbone_features(model.eval(), x, upto=5)
    for s in ref:
        assert ours[s].shape == ref[s].shape and rel_err(ours[s].double(), ref[s]) <= 1e-4, (variant, s)


def test_cli_picks_the_variants_yaml(tmp_path, capsys):
    v = apple_variant("s1")
    src = tmp_path / "mobileone_s1_unfused.pth.tar"
    torch.save(make_apple_state_dict(v["widths"], v["blocks"], seed=12, branches=1), src)
    out = tmp_path / "s1.pt"
    assert cm.main(["--src", str(src), "--out", str(out), "--nc", "2"]) == 0
    text = capsys.readouterr().out
    assert "MobileOne-S1" in text and "yolov7-tiny-ms1.yaml" in text and "NOT loaded" not in text
    ck = load_checkpoint(out)
    assert ck["cfg"]["yaml_file"] == "yolov7-tiny-ms1.yaml" and ck["nc"] == 2
    bad = tmp_path / "odd.pth.tar"
    torch.save(make_apple_state_dict((32, 32, 64, 64, 128), (1, 1, 1, 1), branches=1), bad)
    assert cm.main(["--src", str(bad), "--out", str(tmp_path / "x.pt")]) == 2
    assert "none of Apple's S0-S4" in capsys.readouterr().err


def test_train_py_from_generated_s2_backbone(tmp_path):
    """python train.py --cfg yolov7-tiny-ms2.yaml --weights <converted S2 backbone> runs end to end and
    transfers every backbone tensor of the file."""
    v = apple_variant("s2")
    src = tmp_path / "mobileone_s2_unfused.pth.tar"
    torch.save(make_apple_state_dict(v["widths"], v["blocks"], seed=13, branches=1), src)
    bb = tmp_path / "yolov7-tiny-ms2-backbone.pt"
    cfg = ROOT / "cfg" / "training" / "yolov7-tiny-ms2.yaml"
    assert cm.main(["--src", str(src), "--cfg", str(cfg), "--out", str(bb), "--nc", "1"]) == 0
    n_file = len(load_checkpoint(bb)["state_dict"])
    data = _tiny_dataset(tmp_path / "ds")
    args = ["--weights", str(bb), "--cfg", str(cfg), "--data", str(data), "--epochs", "1", "--batch-size", "2",
            "--img-size", "64", "64", "--device", "cpu", "--workers", "0", "--project", str(tmp_path / "runs"),
            "--name", "ms2"]
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert f"Transferred {n_file}/" in out, out[-3000:]
    last = next((tmp_path / "runs").glob("ms2*/weights/last.pt"))
    assert load_checkpoint(last)["cfg"]["backbone"][4][3][0] == 2048


# --------------------------------------------------------------------------- the reference fixture
def test_fixture_conversion_reproduces_apple_stages(shared_dir, tmp_path):
    fx = torch.load(shared_dir / "fixtures" / "mobileone_s0_apple_format.pt", weights_only=True)
    assert fx["bn_eps"] == APPLE_EPS
    src = tmp_path / "mobileone_s0_unfused.pth.tar"
    torch.save(fx["state_dict"], src)  # Apple's files are plain state dicts
    out = tmp_path / "yolov7-tiny-ms0-backbone.pt"
    r = subprocess.run([sys.executable, str(ROOT / "weights" / "convert_mobileone.py"), "--src", str(src),
                        "--cfg", str(CFG), "--out", str(out)], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "stage4.1.rbr_conv.0.conv.weight" in r.stdout  # the 1024-vs-512 stage is named
    ck = load_checkpoint(out)
    model = cm.build_model(ck["cfg"])
    model.load_state_dict(ck["state_dict"], strict=False)
    ours = backbone_features(model.eval(), fx["input"])
    for s in ("stage0", "stage1", "stage2", "stage3"):
        assert rel_err(ours[s], fx["stage_outputs"][s]) <= 1e-4, s
    # our Apple-format generator and reference forward agree with the fixture's layout
    assert {k: tuple(v.shape) for k, v in make_apple_state_dict().items()} == \
        {k: tuple(v.shape) for k, v in fx["state_dict"].items()}
    ref = apple_reference_stages(fx["state_dict"], fx["input"], upto=5)
    assert all(rel_err(ref[s], fx["stage_outputs"][s]) <= 1e-4 for s in ref)


# --------------------------------------------------------------------------- YOLOv7 pickles
def _legacy_module():
    """A YOLOv7-only class (absent from this project) for the pickled test file."""
    mod = types.ModuleType("models.legacy_only")

    class ReOrgLegacy(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

    ReOrgLegacy.__module__ = mod.__name__
    ReOrgLegacy.__qualname__ = "ReOrgLegacy"
    mod.ReOrgLegacy = ReOrgLegacy
    return mod


def test_convert_yolov7_pickle(base_model, tmp_path, capsys):
    pickled = copy.deepcopy(base_model).half()
    pickled.names = ["cat", "dog"] + [f"c{i}" for i in range(78)]
    mod = _legacy_module()
    sys.modules[mod.__name__] = mod
    try:
        pickled.legacy = mod.ReOrgLegacy()  # a class this project does not have
        src = tmp_path / "yolov7-ms0.pt"
        torch.save({"model": pickled, "ema": None, "epoch": 7, "best_fitness": np.array([0.25]),
                    "optimizer": None, "training_results": "x"}, src)
    finally:
        del sys.modules[mod.__name__]
    out = tmp_path / "conv.pt"
    # refused without --trust-pickle
    assert cy.main(["--src", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "--trust-pickle" in err and not out.exists()
    assert cy.main(["--src", str(src), "--out", str(out), "--trust-pickle"]) == 0
    cap = capsys.readouterr()
    assert "WARNING" in cap.err and "runs whatever code" in cap.err
    ck = load_checkpoint(out)
    assert ck["nc"] == 80 and ck["fused"] is False and ck["epoch"] == -1 and ck["best_fitness"] == 0.25
    assert ck["names"][:2] == ["cat", "dog"] and ck["cfg"] == base_model.yaml
    want = {k: v.float() if v.is_floating_point() else v for k, v in pickled.state_dict().items()
            if not k.startswith("legacy.")}
    assert set(ck["state_dict"]) == set(base_model.state_dict()) == set(want)
    for k, v in ck["state_dict"].items():
        assert v.dtype == want[k].dtype and torch.equal(v, want[k]), k
    assert "legacy.w" in cap.out  # reported as unused, not silently dropped


# --------------------------------------------------------------------------- pickled code is refused
class _Evil:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture()
def evil_files(tmp_path):
    """(marker, [torch.save'd checkpoint with a payload, raw pickle payload])."""
    marker = tmp_path / "PWNED"
    a = tmp_path / "evil.pt"
    torch.save({"cfg": {}, "state_dict": {"w": torch.ones(1)}, "model": _Evil(marker), "nc": 1}, a)
    b = tmp_path / "evil_raw.pth.tar"
    with open(b, "wb") as f:
        pickle.dump({"stage0.x": _Evil(marker)}, f)
    return marker, [a, b]


def test_payload_is_real(evil_files):
    marker, files = evil_files
    torch.load(files[0], weights_only=False)  # the unsafe way: the command runs
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_library_loaders_refuse_pickled_code(evil_files):
    marker, files = evil_files
    for f in files:
        with pytest.raises(CheckpointError, match="refused"):
            load_checkpoint(f)
        with pytest.raises(CheckpointError):
            cm.load_apple_state_dict(f)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_attempt_load_refuses_pickled_code(evil_files):
    from models import experimental  # a broken import fails the test (it used to skip it)

    marker, files = evil_files
    for f in files:
        with pytest.raises(Exception, match="(?i)refused"):
            experimental.attempt_load(str(f), map_location="cpu")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_convert_yolov7_with_trust_pickle_still_runs_no_code(evil_files, capsys):
    """--trust-pickle reads through the weights-only unpickler: a payload's global is refused by name."""
    marker, files = evil_files
    for f in files:
        out = f.with_suffix(".out.pt")
        assert cy.main(["--src", str(f), "--out", str(out), "--trust-pickle"]) == 2
        err = capsys.readouterr().err
        assert "refused" in err and "system" in err and not out.exists()
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_converters_refuse_pickled_code(evil_files, capsys):
    marker, files = evil_files
    for f in files:
        out = f.with_suffix(".out.pt")
        assert cm.main(["--src", str(f), "--cfg", str(CFG), "--out", str(out)]) == 2
        assert "refused" in capsys.readouterr().err
        assert cy.main(["--src", str(f), "--out", str(out)]) == 2  # no --trust-pickle
        assert "refused" in capsys.readouterr().err
        assert not out.exists()
    assert not marker.exists()
    # the converters' CLIs as users run them
    for script, extra in (("convert_mobileone.py", ["--cfg", str(CFG)]), ("convert_yolov7.py", [])):
        r = subprocess.run([sys.executable, str(ROOT / "weights" / script), "--src", str(files[0]),
                            "--out", str(files[0].with_suffix(".cli.pt")), *extra],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode != 0 and "refused" in r.stderr, (script, r.stdout, r.stderr)
    assert not marker.exists()


def test_converted_backbone_transfers_like_train_py(converted, base_model):
    """train.py --weights keeps every key whose name and shape match: all imported tensors."""
    from utils.torch_utils import intersect_dicts

    ckpt, report, _ = converted
    csd = intersect_dicts(ckpt["state_dict"], base_model.state_dict(), exclude=["anchor"])
    assert set(csd) == set(ckpt["state_dict"]) == set(report.loaded)


# --------------------------------------------------------------------------- the user-facing CLIs
def _tiny_dataset(root: Path) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(root / "images" / "train" / f"{i}.jpg"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        (root / "labels" / "train" / f"{i}.txt").write_text("0 0.5 0.5 0.3 0.3\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnc: 1\nnames: ['a']\n")
    return data


CLI_CASES = {
    "train.py": lambda w, d, tmp: ["--weights", str(w), "--cfg", str(CFG), "--data", str(d), "--epochs", "1",
                                   "--batch-size", "2", "--img-size", "64", "64", "--device", "cpu",
                                   "--workers", "0", "--project", str(tmp / "runs"), "--name", "t"],
    "test.py": lambda w, d, tmp: ["--weights", str(w), "--data", str(d), "--img-size", "64", "--batch-size", "2",
                                  "--device", "cpu", "--project", str(tmp / "runs"), "--name", "v"],
    "detect.py": lambda w, d, tmp: ["--weights", str(w), "--source", str(d.parent / "images" / "train"),
                                    "--img-size", "64", "--device", "cpu", "--project", str(tmp / "runs"),
                                    "--name", "d"],
    "export.py": lambda w, d, tmp: ["--weights", str(w), "--img-size", "64", "64", "--device", "cpu"],
}


@pytest.mark.parametrize("script", list(CLI_CASES))
def test_cli_refuses_pickled_code(script, evil_files, tmp_path):
    if not (ROOT / script).is_file():
        pytest.skip(f"{script} is not in the repository")
    marker, files = evil_files
    data = _tiny_dataset(tmp_path / "ds")
    r = subprocess.run([sys.executable, str(ROOT / script), *CLI_CASES[script](files[0], data, tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert "refused" in out and files[0].name in out, out[-3000:]
    assert not marker.exists()
    assert not list(tmp_path.glob("**/*.onnx")) and not list(tmp_path.glob("**/*.torchscript"))
