"""export.py: fused checkpoint round trip, TorchScript, ONNX (static, dynamic, raw, end2end) vs PyTorch."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from deploy_utils import NAMES, make_checkpoint, make_image

import export
from models.experimental import attempt_load
from utils.general import non_max_suppression

H, W = 128, 160


def rel(a, b) -> float:
    """max |a - b| / max |a| (the project's float32 agreement measure)."""
    a = torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a).double()
    b = torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b).double()
    assert a.shape == b.shape
    return float((a - b).abs().max() / a.abs().max())


def ort_run(f: Path, x: torch.Tensor) -> list[np.ndarray]:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})


def letterboxed(path: Path) -> torch.Tensor:
    """The generated H x W image as the (1, 3, H, W) float input export.py builds from --source."""
    im = cv2.imread(str(path))
    assert im.shape[:2] == (H, W)
    return torch.from_numpy(np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))).float().div(255)[None]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("export")
    make_image(d / "img.jpg", H, W)
    return make_checkpoint(d / "best.pt")


@pytest.fixture(scope="module")
def fused_model(ckpt):
    return attempt_load(ckpt, fuse=True)


@pytest.fixture(scope="module")
def ckpt_tight(tmp_path_factory) -> Path:
    """A better-conditioned model (float32 noise ~3e-5) for the 1e-4 agreement checks."""
    return make_checkpoint(tmp_path_factory.mktemp("export_tight") / "best.pt", head_scale=0.1)


@pytest.fixture(scope="module")
def fused_tight(ckpt_tight):
    return attempt_load(ckpt_tight, fuse=True)


def test_fused_checkpoint_round_trip(ckpt, fused_model):
    res = export.run(ckpt, img_size=[H, W], include=["fused"], source=str(ckpt.parent / "img.jpg"))
    f = ckpt.parent / "best-fused.pt"
    assert res["files"]["fused"] == str(f) and f.is_file()
    raw = torch.load(f, map_location="cpu", weights_only=True)  # plain data, no pickled modules
    assert raw["fused"] is True and raw["names"] == NAMES and raw["nc"] == 3
    assert torch.equal(torch.as_tensor(raw["stride"]).float(), torch.tensor([8.0, 16.0, 32.0]))
    assert not any("bn." in k or "rbr_" in k for k in raw["state_dict"]), "unfused branches left in the file"
    # fewer parameters and FLOPs after re-parameterization
    (p0, p1), (g0, g1) = res["params"], res["gflops"]
    assert p1 < p0 and g1 < g0
    # re-loaded fused model == fused in memory, and == unfused up to float32 rounding
    reloaded = attempt_load(f)
    unfused = attempt_load(ckpt, fuse=False)
    x = letterboxed(ckpt.parent / "img.jpg")
    with torch.no_grad():
        y_fused, y_reloaded, y_unfused = fused_model(x)[0], reloaded(x)[0], unfused(x)[0]
    assert torch.equal(y_fused, y_reloaded)
    assert rel(y_unfused, y_fused) < 1e-3
    assert res["fused vs unfused (PyTorch)"]["rel_error"] == pytest.approx(rel(y_unfused, y_fused), rel=1e-6)
    # a fused checkpoint is accepted as input too (not re-written)
    res2 = export.run(f, img_size=[H, W], include=["fused"])
    assert res2["files"]["fused"] == str(f)


def test_export_cli_fails_beyond_tolerance(ckpt, capsys):
    # fused vs unfused differ by float32 rounding (> 0), so a zero tolerance must fail with exit 1
    assert export.main(["--weights", str(ckpt), "--img-size", "64", "--include", "fused", "--rtol", "0"]) == 1
    assert export.main(["--weights", str(ckpt.parent / "missing.pt"), "--include", "fused"]) == 1


def test_export_rejects_bad_options(ckpt):
    with pytest.raises(export.ExportError, match="end2end"):
        export.run(ckpt, img_size=[64], include=["torchscript"], end2end=True)
    with pytest.raises(export.ExportError, match="decoded"):
        export.run(ckpt, img_size=[64], include=["onnx"], end2end=True, grid=False)


def test_torchscript_reloads_and_agrees(ckpt, fused_model):
    res = export.run(ckpt, img_size=[H, W], include=["torchscript"])
    f = Path(res["files"]["torchscript"])
    assert f.name == "best.torchscript.pt"
    extra = {"config.txt": ""}
    ts = torch.jit.load(str(f), _extra_files=extra)
    meta = json.loads(extra["config.txt"])
    assert meta["names"] == NAMES and meta["stride"] == 32
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert rel(fused_model(x)[0], ts(x)) < 1e-5


def test_onnx_static_and_dynamic_agree_with_pytorch(ckpt_tight, fused_tight):
    import onnx

    ckpt, fused_model = ckpt_tight, fused_tight
    res = export.run(ckpt, img_size=[H, W], include=["onnx"], simplify=True)
    f = Path(res["files"]["onnx"])
    onnx.checker.check_model(onnx.load(str(f)))
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = fused_model(x)[0]
    (out,) = ort_run(f, x)
    assert out.shape == (1, 3 * (16 * 20 + 8 * 10 + 4 * 5), 8)
    assert rel(ref, out) < 1e-4
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(f)).metadata_props}
    assert meta["names"] == NAMES and meta["dynamic"] is False

    res = export.run(ckpt, img_size=[H, W], include=["onnx"], dynamic=True)
    assert any("dynamic" in k for k in res)  # export.py checked a second shape itself
    for shape in ((2, 3, 96, 192), (1, 3, 160, 128)):
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            ref = fused_model(x)[0]
        (out,) = ort_run(f, x)
        assert rel(ref, out) < 1e-4, shape


@pytest.mark.slow
def test_onnx_raw_outputs_without_grid(ckpt_tight, fused_tight):
    ckpt, fused_model = ckpt_tight, fused_tight
    res = export.run(ckpt, img_size=[H, W], include=["onnx"], grid=False)
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        raw = fused_model(x)[1]
    outs = ort_run(Path(res["files"]["onnx"]), x)
    assert [o.shape for o in outs] == [tuple(r.shape) for r in raw] == [(1, 3, 16, 20, 8), (1, 3, 8, 10, 8),
                                                                       (1, 3, 4, 5, 8)]
    # logits of this untrained head are ~0.1 while float32 noise is ~1e-4 absolute (PyTorch float32
    # vs float64 alike), so compare absolutely
    for r, o in zip(raw, outs):
        assert np.abs(r.numpy() - o).max() < 1e-3


def test_end2end_onnx_matches_pytorch_nms(ckpt, fused_model):
    conf, iou, topk = 0.3, 0.45, 100
    src = ckpt.parent / "img.jpg"
    res = export.run(ckpt, img_size=[H, W], include=["onnx"], end2end=True, dynamic=True, conf_thres=conf,
                     iou_thres=iou, topk_all=topk, source=str(src))
    f = Path(res["files"]["onnx"])
    x = letterboxed(src)
    num, boxes, scores, classes = ort_run(f, x)
    assert num.shape == (1, 1) and boxes.shape == (1, topk, 4) and scores.shape == (1, topk)
    assert num.dtype == np.int32 and classes.dtype == np.int32
    with torch.no_grad():
        ref = non_max_suppression(fused_model(x)[0], conf, iou, max_det=topk)[0]
    n = int(num[0, 0])
    assert 0 < n < topk, "the test image should give some, but not topk, detections"
    assert n == len(ref)
    assert (classes[0, n:] == -1).all() and (scores[0, n:] == 0).all()
    # same boxes: match each ONNX detection to the PyTorch one of the same class
    rb, rs, rc = ref[:, :4].numpy(), ref[:, 4].numpy(), ref[:, 5].numpy().astype(int)
    free = np.ones(n, bool)
    for b, s, c in zip(boxes[0, :n], scores[0, :n], classes[0, :n]):
        cand = np.flatnonzero(free & (rc == c))
        d = np.abs(rb[cand] - b).max(1)
        k = int(d.argmin())
        assert d[k] < 1e-3 * np.abs(rb).max() and abs(rs[cand[k]] - s) < 1e-4
        free[cand[k]] = False
    assert np.allclose(np.sort(scores[0, :n])[::-1], scores[0, :n])  # sorted by score
