"""Model yamls and checkpoint cfgs that try to make the program allocate or loop without bound are
refused before anything is built, and layers that do not fit are named (index, module, file)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from models.model_yaml import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    MAX_PARAMS,
    MAX_YAML_BYTES,
    MAX_YAML_NODES,
    ModelConfigError,
    load_model_yaml,
)
from models.yolo import Model, check_model_size
from utils.safe_yaml import YamlError, check_data_size, parse_yaml

ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def small_cfg(**kw) -> dict:
    """A tiny valid model: MobileOne stem and stages, a Conv, an upsample/concat head, IDetect."""
    d = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": ANCHORS,
         "backbone": [[-1, 1, "MobileOneBlock", [16, 3, 2, 1]],  # 0 /2
                      [-1, 1, "MobileOne", [16, 2, 1, False, 0]],  # 1 /4
                      [-1, 1, "MobileOne", [32, 2, 1, False, 0]],  # 2 /8
                      [-1, 1, "MobileOne", [32, 2, 1, True, 1]],  # 3 /16
                      [-1, 1, "Conv", [32, 3, 2, None, 1, "nn.ReLU()"]]],  # 4 /32
         "head": [[-1, 1, "nn.Upsample", [None, 2, "nearest"]],  # 5 /16
                  [[-1, 3], 1, "Concat", [1]],  # 6
                  [-1, 1, "Conv", [16, 1, 1]],  # 7
                  [[2, 7, 4], 1, "IDetect", ["nc", "anchors"]]]}  # 8
    d.update(kw)
    return d


def write(tmp_path: Path, d: dict, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d))
    return p


def refused_quickly(cfg, *needles: str, seconds: float = 20.0) -> str:
    t = time.perf_counter()
    with pytest.raises(ModelConfigError) as e:
        Model(cfg)
    assert time.perf_counter() - t < seconds
    msg = str(e.value)
    for n in needles:
        assert n in msg, msg
    return msg


def test_small_cfg_builds():
    m = Model(small_cfg())
    assert m.stride.tolist() == [8.0, 16.0, 32.0]
    with torch.no_grad():
        assert m.eval()(torch.rand(1, 3, 64, 64))[0].shape == (1, 3 * (64 + 16 + 4), 7)


# ----------------------------------------------------------------------------- alias bombs
def billion_laughs(levels: int = 9, fan: int = 10) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(fan))}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_yaml_refused_before_expansion(tmp_path):
    text = billion_laughs()
    assert len(text) < 1024
    p = tmp_path / "lol.yaml"
    p.write_text("nc: 2\n" + text)
    refused_quickly(p, "lol.yaml", "aliases", seconds=10)
    with pytest.raises(YamlError, match="expand"):
        parse_yaml(text, "x.yaml", MAX_YAML_NODES)
    # a wide but shallow fan-out of 2 per level, 60 levels: 2^60 items, still refused at once
    t = time.perf_counter()
    with pytest.raises(YamlError):
        parse_yaml(billion_laughs(60, 2), "x.yaml", MAX_YAML_NODES)
    assert time.perf_counter() - t < 5


@pytest.mark.parametrize("text,needle", [
    ("a: &a [1, *a]\n", "recursive"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ("a: !!python/object/apply:os.system ['true']\n", "invalid yaml"),
], ids=["recursive", "deep", "python-tag"])
def test_recursive_deep_and_tagged_yaml_refused(text, needle, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ModelConfigError, match=needle) as e:
        load_model_yaml(p)
    assert "bad.yaml" in str(e.value)


def test_oversized_yaml_file_refused(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("# " + "x" * MAX_YAML_BYTES + "\n")
    with pytest.raises(ModelConfigError, match="big.yaml.*larger than"):
        load_model_yaml(p)


def test_shipped_yamls_are_far_below_the_limits():
    for name in ("yolov7.yaml", "yolov7-tiny-ms4.yaml"):
        d = load_model_yaml(name)
        check_data_size(d, name, MAX_YAML_NODES // 20)  # raises when over
        n, _ = check_model_size(d)
        assert n < MAX_PARAMS / 20


def test_checkpoint_cfg_with_shared_references_refused(tmp_path):
    """A checkpoint's cfg (plain data after torch.load(weights_only=True)) can hold the same list many
    times over (pickle memo): the unfolded size counts, and Model refuses it before copying it."""
    lol = ["lol"]
    for _ in range(30):
        lol = [lol, lol]  # 2^30 leaves when unfolded
    cfg = small_cfg(junk=lol)
    p = tmp_path / "ckpt.pt"
    torch.save({"cfg": cfg}, p)
    loaded = torch.load(p, weights_only=True)["cfg"]
    refused_quickly(loaded, "expands to more than", seconds=10)
    rec = small_cfg()
    rec["junk"] = [1]
    rec["junk"].append(rec["junk"])
    refused_quickly(rec, "recursive", seconds=10)


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("change,needles", [
    ({"width_multiple": 1000.0}, ("width_multiple", str(MAX_CHANNELS))),
    ({"depth_multiple": 1e6}, ("blocks", str(MAX_BLOCKS))),
    ({"width_multiple": 40.0}, ("parameters", "before allocating")),
    ({"nc": 10 ** 8}, ("parameters", "before allocating")),
])
def test_multiples_and_nc_that_would_allocate_gigabytes_refused(change, needles, tmp_path):
    d = load_model_yaml("yolov7-tiny-ms0.yaml")
    d.pop("yaml_file")
    d.update(change)
    refused_quickly(write(tmp_path, d, "huge.yaml"), "huge.yaml", *needles)


@pytest.mark.parametrize("layer,args,needles", [
    (3, [32, 10 ** 8, 1, False, 0], ("layer 3 (MobileOne)", "blocks")),  # block count
    (3, [32, 2, 10 ** 6, False, 0], ("layer 3 (MobileOne)", "blocks")),  # conv branches
    (0, [16, 3, 2, 1, 1, 1, False, 10 ** 7], ("layer 0 (MobileOneBlock)", "blocks")),
    (4, [10 ** 9, 3, 2], ("layer 4 (Conv)", "channels")),
])
def test_block_and_channel_counts_refused(layer, args, needles, tmp_path):
    d = small_cfg()
    d["backbone"][layer][3] = args
    refused_quickly(write(tmp_path, d), "m.yaml", *needles)


def test_huge_upsample_refused_by_the_shape_probe(tmp_path):
    d = small_cfg()
    d["head"][0][3] = [None, 10 ** 4, "nearest"]
    refused_quickly(write(tmp_path, d), "m.yaml", "layer 5 (nn.Upsample)", "elements")


# ----------------------------------------------------------------------------- layers that do not fit
def test_concat_of_different_sizes_names_layer_module_and_file(tmp_path):
    d = small_cfg()
    d["head"][1][0] = [-1, 2]  # a /16 map with a /8 map
    msg = refused_quickly(write(tmp_path, d, "misfit.yaml"), "misfit.yaml", "layer 6 (Concat", "do not fit")
    assert "(1, 32, 8, 8)" in msg and "(1, 32, 16, 16)" in msg


@pytest.mark.parametrize("where,args,needles", [
    (("head", 2), [0, 1, 1], ("layer 7 (Conv)", "output channels")),
    (("backbone", 1), [0, 2, 1, False, 0], ("layer 1 (MobileOne)", "output channels")),
    (("backbone", 0), [-16, 3, 2, 1], ("layer 0 (MobileOneBlock)", "output channels")),
])
def test_zero_or_negative_channels_named(where, args, needles, tmp_path):
    d = small_cfg()
    d[where[0]][where[1]][3] = args
    refused_quickly(write(tmp_path, d, "zero.yaml"), "zero.yaml", *needles)


def test_bad_from_and_detect_levels_named(tmp_path):
    d = small_cfg()
    d["head"][1][0] = [-1, 12]
    refused_quickly(write(tmp_path, d, "from.yaml"), "from.yaml", "layer 6 (Concat)", "'from' index 12")
    d = small_cfg()
    d["head"][3][0] = [2, 7]
    refused_quickly(write(tmp_path, d, "det.yaml"), "det.yaml", "layer 8 (IDetect)", "2 inputs but 3 anchor levels")
    d = small_cfg()
    d["backbone"][4][3] = [32, 3, 2, None, 5]  # groups that do not divide the channels
    refused_quickly(write(tmp_path, d, "groups.yaml"), "groups.yaml", "layer 4 (Conv)", "cannot build")
