"""Model building from yaml: parameter counts, strides, state-dict names, exact fusing, reference
fidelity, and refusal of malicious or malformed yaml."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from model_checks import fuse_twice, randomize_weights, rel_err

from models.model_yaml import ModelConfigError, load_model_yaml, parse_arg
from models.yolo import Detect, IDetect, Model
from utils.log import LOGGER

CFGS = ["yolov7-tiny-ms0.yaml", "yolov7-tiny.yaml", "yolov7.yaml"]


@pytest.fixture(scope="module")
def built():
    """One freshly built model per cfg (nc=80), shared read-only by the tests below."""
    torch.manual_seed(0)
    return {c: Model(c) for c in CFGS}


def condition(model: Model, seed: int = 0) -> Model:
    """Random, well-conditioned weights like the reference fixtures': conv weights N(0, 1/fan_in),
    BatchNorm mean N(0, 0.2^2), var U(0.5, 1.5), gamma U(0.1, 0.5), beta N(0, 0.05^2), random implicits.
    Returns the model in eval mode."""
    randomize_weights(model, seed, mean_std=0.2, var=(0.5, 1.0), gamma=(0.1, 0.4), beta_std=0.05,
                      implicit_std=0.02)
    return model.eval()


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize("cfg,n", [("yolov7-tiny-ms0.yaml", 7_504_234), ("yolov7-tiny.yaml", 6_228_762),
                                   ("yolov7.yaml", 37_622_682)])
def test_parameter_counts_at_nc80(built, cfg, n):
    assert sum(p.numel() for p in built[cfg].parameters()) == n


@pytest.mark.parametrize("cfg", CFGS)
def test_strides_anchors_and_untouched_batchnorm(built, cfg):
    m = built[cfg]
    det = m.model[-1]
    assert isinstance(det, IDetect)
    assert m.stride.tolist() == [8.0, 16.0, 32.0] and det.stride.tolist() == [8.0, 16.0, 32.0]
    # anchors in stride units, anchor_grid in pixels, both buffers in the state dict
    assert torch.allclose(det.anchors * det.stride.view(-1, 1, 1), det.anchor_grid.view(3, 3, 2))
    assert float(det.anchor_grid[0, 0, 0, 0, 0, 0]) in (10.0, 12.0)
    sd = m.state_dict()
    assert f"model.{len(m.model) - 1}.anchors" in sd and f"model.{len(m.model) - 1}.anchor_grid" in sd
    # the stride probe ran in eval mode: BatchNorm statistics are still the initial ones
    for b in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        assert b.eps == 1e-3 and b.momentum == 0.03
        assert int(b.num_batches_tracked) == 0
        assert torch.all(b.running_mean == 0) and torch.all(b.running_var == 1)
    assert m.training


def test_ms0_state_dict_names(built):
    sd = built["yolov7-tiny-ms0.yaml"].state_dict()
    for k in ("model.0.rbr_conv.0.conv.weight", "model.0.rbr_scale.bn.running_var", "model.1.stage.1.rbr_skip.weight",
              "model.52.bn.weight", "model.53.m.0.weight", "model.53.ia.0.implicit", "model.53.im.2.implicit",
              "model.4.stage.0.rbr_conv.3.bn.weight"):
        assert k in sd, k
    assert sd["model.1.stage.0.rbr_conv.0.conv.weight"].shape == (48, 1, 3, 3)  # depthwise
    assert "model.0.rbr_skip.weight" not in sd  # stride 2: no skip


def test_model_attributes(built):
    m = built["yolov7-tiny-ms0.yaml"]
    assert m.nc == 80 and m.names == [str(i) for i in range(80)]
    assert m.hyp == {} and m.gr == 1.0
    assert m.yaml["nc"] == 80 and isinstance(m.yaml["backbone"], list)
    layer = m.model[2]
    assert (layer.i, layer.f, layer.type) == (2, -1, "MobileOne") and layer.np > 0
    assert m.model[-1].f == [50, 51, 52] and m.model[15].type == "nn.Upsample"
    assert isinstance(m.model[5].act, nn.LeakyReLU) and m.model[5].act.negative_slope == 0.1


def test_mobileone_stage_class_keeps_yaml_name_and_keys(built):
    """The stage class says what it is (MobileOneStage); yamls still call it MobileOne, layer.type says
    what the yaml said, state-dict keys are unchanged and yolov7-tiny-ms0.yaml is byte for byte the
    original design's."""
    import hashlib

    from models.common import MobileOneStage
    from models.yolo import MODULES

    m = built["yolov7-tiny-ms0.yaml"]
    assert MODULES["MobileOne"] is MobileOneStage and "MobileOneStage" not in MODULES
    assert all(isinstance(m.model[i], MobileOneStage) and m.model[i].type == "MobileOne" for i in range(1, 5))
    assert "model.3.stage.19.rbr_conv.3.bn.running_var" in m.state_dict()
    text = (Path(__file__).resolve().parents[1] / "cfg" / "training" / "yolov7-tiny-ms0.yaml").read_bytes()
    assert hashlib.sha256(text).hexdigest() == "202b1fd6a9bb26df84b8d15655321d58fefadb997bb485453cf3385b75662588"


def test_nc_override_and_dict_cfg_not_mutated():
    d = load_model_yaml("yolov7-tiny-ms0.yaml")
    before = copy.deepcopy(d)
    m = Model(d, nc=3)
    assert d == before
    assert m.nc == 3 and m.model[-1].no == 8 and m.model[-1].m[0].out_channels == 24
    assert m.names == ["0", "1", "2"]


# ----------------------------------------------------------------------------- forward
def test_train_forward_backward_batch2_320():
    m = Model("yolov7-tiny-ms0.yaml").train()
    out = m(torch.rand(2, 3, 320, 320))
    assert isinstance(out, list) and [tuple(o.shape) for o in out] == [
        (2, 3, 40, 40, 85), (2, 3, 20, 20, 85), (2, 3, 10, 10, 85)]
    sum(o.float().mean() for o in out).backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("cfg", ["yolov7-tiny-ms0.yaml", "yolov7-tiny.yaml"])
def test_eval_odd_size_decoding(built, cfg):
    m = copy.deepcopy(built[cfg]).eval()
    with torch.no_grad():
        pred, raw = m(torch.rand(1, 3, 352, 480))
    assert pred.shape == (1, 3 * (44 * 60 + 22 * 30 + 11 * 15), 85)
    assert [tuple(r.shape[2:4]) for r in raw] == [(44, 60), (22, 30), (11, 15)]
    # decoding: cell (0, 1) of level 0, anchor 0
    r = raw[0][0, 0, 0, 1].sigmoid()
    exp = torch.tensor([(r[0] * 2 - 0.5 + 1) * 8, (r[1] * 2 - 0.5) * 8, (r[2] * 2) ** 2 * 10, (r[3] * 2) ** 2 * 13])
    assert torch.allclose(pred[0, 1, :4], exp, rtol=1e-5) and torch.allclose(pred[0, 1, 4:], r[4:])
    assert (pred[..., 4:] >= 0).all() and (pred[..., 4:] <= 1).all()


def test_export_flag_returns_decoded_only(built):
    m = copy.deepcopy(built["yolov7-tiny.yaml"]).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        pred, _ = m(x)
        m.model[-1].export = True
        only = m(x)
    assert torch.is_tensor(only) and torch.equal(only, pred)
    assert Detect.export is False


def test_augmented_forward(built):
    m = copy.deepcopy(built["yolov7-tiny.yaml"]).eval()
    with torch.no_grad():
        pred, none = m(torch.rand(1, 3, 64, 64), augment=True)
    assert none is None and pred.shape[0] == 1 and pred.shape[-1] == 85 and pred.shape[1] > 3 * 84


# ----------------------------------------------------------------------------- fusing
@pytest.mark.parametrize("cfg", CFGS)
def test_fuse_exact_idempotent_and_reloadable(built, cfg):
    m = condition(copy.deepcopy(built[cfg]))
    x = torch.rand(1, 3, 64, 96)
    y0, y1 = fuse_twice(m, x)  # idempotent, bit for bit, nothing train-time left
    assert rel_err(y0, y1) <= 1e-5
    sd2 = m.state_dict()
    if cfg == "yolov7-tiny-ms0.yaml":
        assert "model.0.reparam_conv.weight" in sd2 and "model.1.stage.1.reparam_conv.bias" in sd2
    # a fused state dict loads into a freshly built and fused model and gives the same output
    fresh = Model(cfg).fuse().eval()
    fresh.load_state_dict(sd2, strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], y1)


def test_info_logs_and_counts_gflops(built):
    records = []

    class H(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    h = H(level=logging.INFO)
    old_level = LOGGER.level
    LOGGER.addHandler(h)
    LOGGER.setLevel(logging.INFO)
    try:
        m = copy.deepcopy(built["yolov7-tiny-ms0.yaml"])
        info = m.info()
        fused = m.eval().fuse().info()
    finally:
        LOGGER.removeHandler(h)
        LOGGER.setLevel(old_level)
    assert any("7504234 parameters" in r for r in records)
    assert info["parameters"] == 7_504_234
    # torch.utils.flop_counter, 2 FLOPs per multiply-add, convolutions at 640x640
    assert info["gflops"] == pytest.approx(23.34, abs=0.05)
    assert fused["gflops"] == pytest.approx(10.97, abs=0.05)
    assert fused["parameters"] < info["parameters"]


# ----------------------------------------------------------------------------- reference fidelity
@pytest.mark.parametrize("name", ["yolov7-tiny-ms0", "yolov7-tiny"])
def test_reference_fidelity(shared_dir: Path, name):
    path = shared_dir / "fixtures" / "yolov7_reference_outputs.pt"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    ref = torch.load(path, map_location="cpu", weights_only=True)
    r = ref["models"][name]
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in r["state_dict"].items()}
    m = Model(f"{name}.yaml")
    m.load_state_dict(sd, strict=True)  # same names and shapes as the original YOLOv7 + plugin
    m.eval()
    with torch.no_grad():
        y = m(ref["input"])[0]
        assert y.shape == r["output"].shape
        assert rel_err(r["output"], y) <= 1e-4
        m.fuse()
        yf = m(ref["input"])[0]
        assert rel_err(r["output_fused"], yf) <= 1e-4


# ----------------------------------------------------------------------------- safe yaml
def _cfg(backbone=None, head=None, **kw):
    d = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0,
         "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
         "backbone": backbone if backbone is not None else [
             [-1, 1, "MobileOneBlock", [16, 3, 2, 1]],
             [-1, 1, "MobileOne", [16, 1, 2, False, 0]],
             [-1, 1, "MobileOne", [32, 1, 2, False, 0]],
             [-1, 1, "Conv", [32, 3, 2, None, 1, "nn.LeakyReLU(0.1)"]],
             [-1, 1, "Conv", [32, 3, 2, None, 1, "nn.SiLU()"]]],
         "head": head if head is not None else [
             [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
             [[-1, 3], 1, "Concat", [1]],
             [-1, 1, "Conv", [16, 1, 1, None, 1, "nn.ReLU()"]],
             [[2, 7, 4], 1, "IDetect", ["nc", "anchors"]]]}
    d.update(kw)
    return d


def test_small_custom_cfg_builds():
    m = Model(_cfg())
    assert m.stride.tolist() == [8, 16, 32]
    assert isinstance(m.model[7].act, nn.ReLU) and isinstance(m.model[4].act, nn.SiLU)
    m.eval()
    with torch.no_grad():
        assert m(torch.rand(1, 3, 64, 64))[0].shape == (1, 3 * (64 + 16 + 4), 7)


@pytest.mark.parametrize("text,expected", [
    ("nn.LeakyReLU(0.1)", nn.LeakyReLU), ("nn.SiLU()", nn.SiLU), ("nn.ReLU()", nn.ReLU), ("nn.Identity()", nn.Identity),
    ("nn.LeakyReLU(negative_slope=0.2)", nn.LeakyReLU)])
def test_parse_arg_activations(text, expected):
    assert isinstance(parse_arg(text, "layer 0", {"nc": 2}), expected)


def test_parse_arg_literals():
    names = {"nc": 7, "anchors": [[1, 2]]}
    assert parse_arg("nc", "l", names) == 7 and parse_arg("anchors", "l", names) == [[1, 2]]
    assert parse_arg("None", "l", names) is None and parse_arg("True", "l", names) is True
    assert parse_arg("nearest", "l", names) == "nearest" and parse_arg("-3", "l", names) == -3
    assert parse_arg([5, 9, 13], "l", names) == [5, 9, 13] and parse_arg(0.5, "l", names) == 0.5


@pytest.mark.parametrize("layer_index,layer,needle", [
    (1, [-1, 1, "__import__('os').system('touch /tmp/moyolo_pwned')", [16]], "__import__"),
    (1, [-1, 1, "Conv", ["__import__('os').system('touch /tmp/moyolo_pwned')"]], "__import__"),
    (1, [-1, 1, "Conv", [16, 3, 1, None, 1, "nn.LeakyReLU(__import__('os'))"]], "__import__"),
    (1, [-1, 1, "Conv", [16, 3, 1, None, 1, "os.system('ls')"]], "os.system"),
    (1, [-1, 1, "Conv", [16, 3, 1, None, 1, "torch.nn.Module()"]], "torch.nn.Module"),
    (1, [-1, 1, "Conv", [16, 3, 1, None, 1, "[x for x in ()]"]], "for x"),
    (1, [-1, 1, "Conv", [16, 3, 1, None, 1, "lambda: 0"]], "lambda"),
    (1, [-1, 1, "eval", [16]], "eval"),
    (1, [-1, 1, "FancyBlock", [16]], "FancyBlock"),
    (1, [-1, 1, "Conv"], "[-1, 1, 'Conv']"),
    (1, [5, 1, "Conv", [16]], "5"),
    (1, [-1, 0, "Conv", [16]], "number"),
    (1, [-1, 1, "Conv", {"c2": 16}], "args"),
    (1, [-1, 1, "Conv", ["16 + 1"]], "16 + 1"),
])
def test_malicious_and_malformed_layers_refused(layer_index, layer, needle):
    backbone = [[-1, 1, "Conv", [16, 3, 2]], layer]
    with pytest.raises(ValueError) as e:
        Model(_cfg(backbone=backbone, head=[[[0, 0, 0], 1, "Detect", ["nc", "anchors"]]]))
    msg = str(e.value)
    assert f"layer {layer_index}" in msg and needle in msg, msg
    assert not Path("/tmp/moyolo_pwned").exists()


@pytest.mark.parametrize("change,needle", [
    ({"nc": "80"}, "nc"), ({"nc": 0}, "nc"), ({"anchors": [[10, 13, 16]]}, "anchors"),
    ({"depth_multiple": -1}, "depth_multiple"), ({"backbone": "Conv"}, "backbone")])
def test_malformed_top_level_refused(change, needle):
    with pytest.raises(ValueError, match=needle):
        Model(_cfg(**change))


def test_missing_key_refused():
    d = _cfg()
    del d["anchors"]
    with pytest.raises(ModelConfigError, match="anchors"):
        Model(d)


def test_yaml_file_with_python_tag_refused(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("nc: !!python/object/apply:os.system ['touch /tmp/moyolo_pwned']\n")
    with pytest.raises(ValueError, match="evil.yaml"):
        Model(p)
    assert not Path("/tmp/moyolo_pwned").exists()


def test_yaml_file_error_names_file_and_layer(tmp_path):
    import yaml
    d = _cfg()
    d["head"][2][2] = "Conv(); import os"
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match=r"bad\.yaml.*layer 7.*Conv\(\); import os"):
        Model(p)


def test_missing_yaml_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Model("nope.yaml")

