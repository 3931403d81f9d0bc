"""models/backend.py: every format loads by its name and predicts what the PyTorch model predicts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_utils import NAMES, make_checkpoint, make_image, make_model

from models import backend as B
from utils.cli import UserError
from utils.data.augment import letterbox
from utils.data.preprocess import preprocess, to_tensor

SIZE = 64
RTOL = 1e-3  # export.py's tolerance: max |a - b| / max |a|


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / a.double().abs().max())  # the export.py measure


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A training checkpoint and its fused, TorchScript and ONNX exports at SIZE x SIZE."""
    import export

    d = tmp_path_factory.mktemp("backend")
    ckpt = make_checkpoint(d / "best.pt", head_scale=0.1)
    files = export.run(ckpt, img_size=[SIZE], include=["fused", "torchscript", "onnx"])["files"]
    make_image(d / "img.jpg", 60, 80, seed=4)
    return {"pt": ckpt, **{k: Path(v) for k, v in files.items()}, "img": d / "img.jpg"}


def _input(model: B.Backend, img: Path) -> torch.Tensor:
    import cv2

    shape, auto = model.input_size(SIZE)
    return to_tensor(preprocess(cv2.imread(str(img)), shape, model.stride, auto)[0])


def test_preprocess_is_the_old_letterbox_rgb_chw(exported):
    import cv2

    im = cv2.imread(str(exported["img"]))
    for auto in (True, False):
        chw, info = preprocess(im, SIZE, 32, auto)
        old = np.ascontiguousarray(letterbox(im, SIZE, stride=32, auto=auto)[0][:, :, ::-1].transpose(2, 0, 1))
        assert chw.dtype == np.uint8 and chw.flags.c_contiguous and np.array_equal(chw, old)
        assert info.shape0 == (60, 80) and info.shape == chw.shape[1:]
    assert preprocess(im, SIZE, 32, False)[0].shape == (3, SIZE, SIZE)
    x = to_tensor([chw, chw])
    assert x.shape == (2, 3, SIZE, SIZE) and x.dtype == torch.float32 and float(x.max()) <= 1.0
    assert torch.equal(x[0], torch.from_numpy(chw).float() / 255)


def test_every_format_predicts_the_same(exported):
    ref_model = B.load_backend(exported["pt"])
    assert ref_model.format == "pytorch" and ref_model.names == NAMES and ref_model.stride == 32
    assert ref_model.imgsz is None and ref_model.batch is None
    x = _input(ref_model, exported["img"])
    x = torch.nn.functional.pad(x, (0, SIZE - x.shape[3], 0, SIZE - x.shape[2]), value=114 / 255)
    ref = ref_model(x)
    assert ref.shape == (1, 3 * (SIZE // 8) ** 2 * 21 // 16, 5 + len(NAMES))
    for key, fmt in (("fused", "pytorch"), ("torchscript", "torchscript"), ("onnx", "onnx")):
        m = B.load_backend(exported[key], threads=1)
        assert m.format == fmt and m.names == NAMES and m.stride == 32, key
        if key != "fused":
            assert m.imgsz == (SIZE, SIZE)
        assert rel(ref, m(x)) < RTOL, key
        d_ref, d = ref_model.predict(x, 0.2)[0], m.predict(x, 0.2)[0]
        assert len(d) == len(d_ref) > 0, key
        # rows of (nearly) equal score may come in another order: match each box to its nearest
        # boxes, conf and class together; exact distances (cdist's default GEMM form for > 25 rows loses
        # ~0.1 to cancellation at coordinates of a few hundred pixels)
        dist = torch.cdist(d[:, :6], d_ref[:, :6], compute_mode="donot_use_mm_for_euclid_dist")
        assert dist.min(1).values.max() < 0.05 and dist.min(0).values.max() < 0.05, key
    unfused = B.load_backend(exported["pt"], fuse=False)
    assert rel(ref, unfused(x)) < RTOL


def test_ensemble_concatenates_then_nms(exported):
    ens = B.load_backend([exported["pt"], exported["onnx"]])
    assert isinstance(ens, B.Ensemble) and ens.imgsz == (SIZE, SIZE) and ens.batch == 1 and ens.names == NAMES
    x = torch.rand(1, 3, SIZE, SIZE)
    one = B.load_backend(exported["pt"])(x)
    y = ens(x)
    assert y.shape == (1, 2 * one.shape[1], one.shape[2])
    assert rel(one, y[:, :one.shape[1]]) < 1e-6 and rel(one, y[:, one.shape[1]:]) < RTOL
    assert len(ens.predict(x, 0.2)[0]) >= len(B.load_backend(exported["pt"]).predict(x, 0.2)[0])


def test_static_batch_and_errors(exported, tmp_path):
    m = B.load_backend(exported["onnx"])
    with pytest.raises(UserError, match="batches of 1"):
        m(torch.rand(2, 3, SIZE, SIZE))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        B.load_backend(tmp_path / "nope.pt")
    (tmp_path / "m.xyz").write_text("x")
    with pytest.raises(UserError, match="unsupported weights format"):
        B.load_backend(tmp_path / "m.xyz")
    (tmp_path / "bad.onnx").write_bytes(b"\0" * 10)
    with pytest.raises(UserError, match="bad.onnx"):
        B.load_backend(tmp_path / "bad.onnx")
    with pytest.raises(UserError, match="--threads"):
        B.set_threads(0)


def test_threads_and_onnxruntime_options():
    n0 = torch.get_num_threads()
    try:
        assert B.set_threads(1) == 1 and torch.get_num_threads() == 1
        assert B.set_threads(None) == B.default_threads() == torch.get_num_threads()
    finally:
        torch.set_num_threads(n0)
    so = B.ort_session_options(3)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_registry_picks_the_first_matching_format(exported, tmp_path):
    class Fake(B.Backend):
        format = "fake"

        def __init__(self, path, device, **_):
            super().__init__(path, device)
            self.names = ["a"]

        def __call__(self, x, augment=False):
            return torch.zeros(len(x), 1, 6)

    folder = tmp_path / "best_fake_model"
    folder.mkdir()
    B.register(lambda p: p.name.endswith("_fake_model"), Fake)
    try:
        m = B.load_backend(folder)
        assert isinstance(m, Fake) and m.names == ["a"] and "fake" in B.extra_format_names()
        assert B.load_backend(exported["torchscript"]).format == "torchscript"  # not taken by .pt
    finally:
        B.BACKENDS.pop(0)


def test_raw_outputs_are_decoded_like_the_detect_head(tmp_path):
    """decode_raw (for --no-grid graphs) == the Detect head's own decoding; an ONNX raw graph with
    'anchors'/'strides' metadata runs through OnnxBackend."""
    import onnx

    import export

    model = make_model(head_scale=0.1).fuse().eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    head = model.model[-1]
    with torch.no_grad():
        ref = export.decoded(model, x)
        raw = export.RawHead(model)(x)
    anchors = head.anchor_grid.view(head.nl, head.na, 2)
    assert rel(ref, B.decode_raw(raw, anchors, head.stride.tolist())) < 1e-5
    f = tmp_path / "raw.onnx"
    torch.onnx.export(export.RawHead(model), x, str(f), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=[f"output{i}" for i in range(head.nl)])
    g = onnx.load(str(f))
    for k, v in {"names": NAMES, "stride": 32, "anchors": anchors.tolist(), "strides": head.stride.tolist()}.items():
        e = g.metadata_props.add()
        e.key, e.value = k, json.dumps(v)
    onnx.save(g, str(f))
    m = B.load_backend(f)
    assert m.names == NAMES and rel(ref, m(x)) < RTOL
    g2 = onnx.load(str(f))
    del g2.metadata_props[:]
    onnx.save(g2, str(f))
    with pytest.raises(UserError, match="raw per-level outputs"):
        B.load_backend(f)
