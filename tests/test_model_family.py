"""The MobileOne model family (yolov7-tiny-ms0, -ms0-full, -ms1 .. -ms4): sizes, Apple's backbone layout,
depth/width multiples applied to MobileOne stages, and exact, idempotent fusing of every yaml."""
from __future__ import annotations

import pytest
import torch
from model_checks import fuse_twice, randomize_weights, rel_err

from models.common import MobileOneBlock, MobileOneStage, SEBlock
from models.model_yaml import load_model_yaml
from models.yolo import Model, check_model_size

#: yaml -> (parameters at nc=80, stage0..stage4 widths, conv branches of stages 1-4, SE blocks of stages 3, 4)
FAMILY = {
    "yolov7-tiny-ms0.yaml": (7_504_234, (48, 48, 128, 256, 512), 4, (0, 0)),
    "yolov7-tiny-ms0-full.yaml": (8_294_762, (48, 48, 128, 256, 1024), 4, (0, 0)),
    "yolov7-tiny-ms1.yaml": (7_738_618, (64, 96, 192, 512, 1280), 1, (0, 0)),
    "yolov7-tiny-ms2.yaml": (12_602_138, (64, 96, 256, 640, 2048), 1, (0, 0)),
    "yolov7-tiny-ms3.yaml": (17_479_866, (64, 128, 320, 768, 2048), 1, (0, 0)),
    "yolov7-tiny-ms4.yaml": (25_272_386, (64, 192, 448, 896, 2048), 1, (5, 1)),
}
BLOCKS = (2, 8, 10, 1)  # Apple's blocks per stage 1-4


def condition(model: Model, seed: int = 0) -> Model:
    """Random, well-conditioned weights (as tests/test_yolo.py), eval mode."""
    randomize_weights(model, seed, mean_std=0.2, var=(0.5, 1.0), gamma=(0.1, 0.4), beta_std=0.05,
                      implicit_std=0.02)
    return model.eval()


def stage_layout(model: Model) -> list[tuple[int, int, int]]:
    """(blocks, output channels, SE blocks) of backbone layers 1-4."""
    out = []
    for st in model.model[1:5]:
        assert isinstance(st, MobileOneStage)
        se = sum(isinstance(b.se, SEBlock) for b in st.stage[::2])
        assert se == sum(isinstance(b.se, SEBlock) for b in st.stage[1::2])  # depthwise and pointwise alike
        out.append((len(st.stage) // 2, st.stage[-1].out_channels, se))
    return out


@pytest.mark.parametrize("cfg", list(FAMILY))
def test_size_and_strides_before_building(cfg):
    """Counted on the meta device (nothing allocated): parameters and strides of each yaml."""
    n, strides = check_model_size(load_model_yaml(cfg))
    assert n == FAMILY[cfg][0] and strides == [8.0, 16.0, 32.0]


NEW = [c for c in FAMILY if c != "yolov7-tiny-ms0.yaml"]  # ms0 is covered by tests/test_yolo.py


@pytest.fixture(autouse=True)
def _no_flop_count(monkeypatch):
    """fuse() logs Model.info(), whose FLOP count is a whole extra forward: not what is tested here."""
    monkeypatch.setattr(Model, "info", lambda self, *a, **k: {})


@pytest.mark.parametrize("cfg", NEW)
def test_apple_layout_and_exact_idempotent_fuse_fp32(cfg):
    """Apple's block counts, widths, branches and SE placement; fuse() exact in float32 (1e-5) at 64 px,
    idempotent, nothing train-time left."""
    _, widths, branches, se = FAMILY[cfg]
    torch.manual_seed(0)
    m = Model(cfg, nc=3)
    stem = m.model[0]
    assert isinstance(stem, MobileOneBlock) and stem.out_channels == widths[0] and len(stem.rbr_conv) == 1
    assert stage_layout(m) == [(b, w, s) for b, w, s in zip(BLOCKS, widths[1:], (0, 0) + se)]
    assert all(len(b.rbr_conv) == branches for st in m.model[1:5] for b in st.stage)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y0, y1 = fuse_twice(condition(m), x)
    assert rel_err(y0, y1) <= 1e-5, rel_err(y0, y1)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", NEW)
def test_exact_fuse_fp64_and_fused_reload(cfg):
    """fuse() exact in float64 (1e-10; 32 px keeps PyTorch's slow float64 depthwise convs short); the
    fused state dict loads into a freshly built, fused model and gives the same output."""
    torch.manual_seed(0)
    m = condition(Model(cfg, nc=3)).double()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y0, y1 = fuse_twice(m, x)
    assert rel_err(y0, y1) <= 1e-10, rel_err(y0, y1)
    fresh = Model(cfg, nc=3).fuse().eval().double()
    fresh.load_state_dict(m.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], y1)


def test_multiples_scale_mobileone_stages():
    """depth_multiple / width_multiple apply to MobileOne stages like every other layer: block counts
    (YOLOv7's rule: counts above 1 scale), widths (to multiples of 8) and SE blocks in proportion."""
    d = load_model_yaml("yolov7-tiny-ms4.yaml")
    d.update(depth_multiple=0.33, width_multiple=0.5)
    torch.manual_seed(0)
    m = Model(d, nc=3)
    assert m.model[0].out_channels == 32
    # blocks 2, 8, 10, 1 -> 1, 3, 3, 1; widths 192, 448, 896, 2048 -> 96, 224, 448, 1024; SE 5 of 10 -> 2 of 3
    assert stage_layout(m) == [(1, 96, 0), (3, 224, 0), (3, 448, 2), (1, 1024, 1)]
    assert m.model[5].conv.out_channels == 224  # head: 1.75 x 256 x 0.5
    full, _ = check_model_size(load_model_yaml("yolov7-tiny-ms4.yaml"))
    assert sum(p.numel() for p in m.parameters()) < full / 3
    m = condition(m)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y0 = m(x)[0]
        y1 = m.fuse()(x)[0]
    assert y0.shape == (1, 3 * (64 + 16 + 4), 8) and rel_err(y0, y1) <= 1e-5
    # multiples of 1 leave Apple's widths exactly as written (no rounding to 8 either)
    d = load_model_yaml("yolov7-tiny-ms0.yaml")
    d["backbone"][1][3][0] = 52
    assert stage_layout(Model(d, nc=3))[0] == (2, 52, 0)
