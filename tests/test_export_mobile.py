"""export.py --include tflite coreml executorch on a checkpoint train.py wrote: each file is checked, carries
its metadata, and (where it runs here) loads through models/backend.py with the PyTorch model's boxes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_utils import own_copy, train_checkpoints

import export
from models.backend import load_backend
from models.experimental import attempt_load
from utils.cli import UserError

pytest.importorskip("litert_torch", reason="requirements-mobile.txt is not installed")
pytest.importorskip("executorch", reason="requirements-mobile.txt is not installed")
pytest.importorskip("coremltools", reason="requirements-mobile.txt is not installed")

SIZE = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mobile")
    ckpt = own_copy(train_checkpoints(root)["best"], root / "export")
    res = export.run(weights=ckpt, img_size=[SIZE], include=["tflite", "executorch", "coreml"])
    return {"ckpt": ckpt, "results": res}


def decoded_reference(ckpt: Path, x: torch.Tensor) -> torch.Tensor:
    model = attempt_load(ckpt, fuse=True).eval()
    with torch.no_grad():
        return model(x)[0]


def test_every_phone_file_is_written_and_checked(exported):
    res, stem = exported["results"], exported["ckpt"].with_suffix("")
    files = res["files"]
    assert files["tflite"] == f"{stem}_float32.tflite" and files["tflite_fp16"] == f"{stem}_float16.tflite"
    assert files["executorch"] == f"{stem}.pte" and files["coreml"] == f"{stem}.mlpackage"
    for name in ("LiteRT best_float32.tflite", "LiteRT best_float16.tflite", "ExecuTorch best.pte"):
        assert res[name]["rel_error"] <= res[name]["tolerance"]
    assert Path(files["tflite_fp16"]).stat().st_size < 0.6 * Path(files["tflite"]).stat().st_size
    assert not list(Path(files["tflite"]).parent.glob(".*tmp*")), "a temporary file was left behind"


@pytest.mark.parametrize("key", ["tflite", "tflite_fp16", "executorch"])
def test_runnable_files_give_the_pytorch_predictions(exported, key):
    f = exported["results"]["files"][key]
    backend = load_backend(f)
    assert backend.format == ("executorch" if key == "executorch" else "tflite")
    assert backend.imgsz == (SIZE, SIZE) and backend.stride == 32 and backend.nc == 4
    assert backend.names == ["circle", "rectangle", "triangle", "star"]
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    ref, out = decoded_reference(exported["ckpt"], x), backend(x)
    assert out.shape == ref.shape
    # fp16 weights: this barely trained checkpoint's own fp16 rounding error sets the bound export.py used
    name = {"tflite": "LiteRT best_float32.tflite", "tflite_fp16": "LiteRT best_float16.tflite",
            "executorch": "ExecuTorch best.pte"}[key]
    tol = 2 * exported["results"][name]["tolerance"] if key == "tflite_fp16" else 2e-3
    assert float((out - ref).abs().max() / ref.abs().max()) < tol


def test_tflite_input_is_nhwc_and_metadata_is_a_zip(exported):
    from ai_edge_litert.interpreter import Interpreter

    from models.backend_mobile import read_tflite_meta

    f = Path(exported["results"]["files"]["tflite"])
    it = Interpreter(model_path=str(f))
    assert list(it.get_input_details()[0]["shape"]) == [1, SIZE, SIZE, 3]
    meta = read_tflite_meta(f)
    assert meta["img_size"] == [SIZE, SIZE] and meta["format"] == "tflite" and len(meta["anchors"]) == 3


def test_coreml_package_spec_and_metadata(exported):
    import coremltools as ct

    d = Path(exported["results"]["files"]["coreml"])
    summary = exported["results"]["coreml"]
    assert summary["executed"] is False and summary["inputs"] == ["image"] and summary["outputs"] == ["output"]
    n = sum(3 * (SIZE // s) ** 2 for s in (8, 16, 32))
    assert summary["output_shape"] == [1, n, 9]
    assert {"conv", "sigmoid", "concat"} <= set(summary["ops"])
    spec = ct.models.MLModel(str(d), skip_model_load=True).get_spec()
    assert json.loads(spec.description.metadata.userDefined["names"]) == ["circle", "rectangle", "triangle", "star"]
    assert json.loads((d / "metadata.json").read_text())["stride"] == 32
    backend = load_backend(d)
    assert backend.format == "coreml" and backend.nc == 4
    if sys.platform != "darwin":
        with pytest.raises(UserError, match="macOS"):
            backend(torch.zeros(1, 3, SIZE, SIZE))


def test_a_wrong_tflite_fails_its_check(exported, tmp_path, monkeypatch):
    """A file that computes something else (a scaled output) is refused and not left behind."""
    import models.export_mobile as em

    real = em.DecodedHead

    class Scaled(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.net = real(model)

        def forward(self, x):
            return self.net(x) * 1.01

    monkeypatch.setattr(em, "DecodedHead", Scaled)
    ckpt = own_copy(exported["ckpt"], tmp_path)
    with pytest.raises(export.ExportError, match="LiteRT best_float32.tflite: relative error"):
        export.run(weights=ckpt, img_size=[SIZE], include=["tflite"])
    assert not (tmp_path / "best_float32.tflite").exists()


def test_a_missing_package_names_the_requirements_file(exported, tmp_path, monkeypatch):
    """The one line run_cli prints (a UserError: exit 2) names the file to install."""
    monkeypatch.setitem(sys.modules, "executorch", None)  # import executorch -> ImportError
    ckpt = own_copy(exported["ckpt"], tmp_path)
    with pytest.raises(UserError, match=r"--include executorch needs .*pip install -r requirements-mobile.txt"):
        export.run(weights=ckpt, img_size=[SIZE], include=["executorch"])
    assert not (tmp_path / "best.pte").exists()


def test_int8_tflite_input_is_quantized_from_float(exported):
    """A full-integer file takes int8 input: the backend quantizes 0..1 pixels with the file's own scale."""
    from models.backend_mobile import dequantize_output, quantize_input

    x = np.array([0.0, 128 / 255, 1.0], dtype=np.float32)
    detail = {"dtype": np.int8, "quantization": (1 / 255, -128)}
    q = quantize_input(x, detail)
    assert q.dtype == np.int8 and q.tolist() == [-128, 0, 127]
    assert np.allclose(dequantize_output(q, detail), [0.0, 128 / 255, 1.0])


@pytest.mark.parametrize("key", ["tflite", "executorch"])
def test_hubconf_loads_phone_files(exported, key):
    """torch.hub's ``custom`` takes a .tflite / .pte like any model file: the same boxes as the .pt."""
    import hubconf

    im = (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    models = [hubconf.custom(str(exported["ckpt"])), hubconf.custom(exported["results"]["files"][key])]
    for m in models:
        m.conf = 0.001  # this barely trained model scores low: keep enough boxes to compare
    ref, out = (m(im, size=SIZE).xyxy[0] for m in models)
    assert len(ref) >= 5 and out.shape == ref.shape
    top = slice(0, 5)  # the highest scores are distinct; far down the list near-equal scores may swap in NMS
    assert torch.allclose(out[top, :4], ref[top, :4], atol=0.5) and torch.equal(out[top, 5], ref[top, 5])
