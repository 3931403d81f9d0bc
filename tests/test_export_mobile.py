"""export.py --include tflite coreml executorch on a checkpoint train.py wrote: each file is checked, carries
its metadata, and (where it runs here) loads through models/backend.py with the PyTorch model's boxes.

The conversions run export.py in a subprocess: litert-torch imports JAX, whose threads make every later
``fork`` (the data loaders of other tests) unsafe in the pytest process. The runtimes load in-process."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
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

MOBILE = ("litert_torch", "ai_edge_litert", "executorch", "coremltools")
MISSING = [m for m in MOBILE if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"requirements-mobile.txt is not installed ({MISSING})")

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
VERIFY = re.compile(r"verify:\S* (?P<name>.+?): .*relative (?P<rel>[0-9.e+-]+) vs float64 "
                    r"\(tolerance (?P<tol>[0-9.e+-]+) ")


def export_cli(*argv: str, prelude: str = "") -> subprocess.CompletedProcess:
    """``python export.py argv`` in a fresh process (``prelude``: Python run first, e.g. a patch)."""
    code = f"import sys; sys.argv = ['export.py', *{list(argv)!r}]\n{prelude}\nimport runpy\n" \
           f"runpy.run_path({str(ROOT / 'export.py')!r}, run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mobile")
    ckpt = own_copy(train_checkpoints(root)["best"], root / "export")
    r = export_cli("--weights", str(ckpt), "--include", "tflite", "executorch", "coreml", "--img-size", str(SIZE))
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    checks = {m["name"]: {"rel_error": float(m["rel"]), "tolerance": float(m["tol"])} for m in VERIFY.finditer(log)}
    stem = ckpt.with_suffix("")
    files = {"tflite": f"{stem}_float32.tflite", "tflite_fp16": f"{stem}_float16.tflite",
             "executorch": f"{stem}.pte", "coreml": f"{stem}.mlpackage"}
    return {"ckpt": ckpt, "results": {"files": files, **checks}, "log": log}


def decoded_reference(ckpt: Path, x: torch.Tensor) -> torch.Tensor:
    model = attempt_load(ckpt, fuse=True).eval()
    with torch.no_grad():
        return model(x)[0]


def test_every_phone_file_is_written_and_checked(exported):
    res = exported["results"]
    files = res["files"]
    assert all(Path(f).exists() for f in files.values()), files
    assert "Export complete" in exported["log"] and "not run: Core ML predicts on macOS / iOS only" in exported["log"]
    for name in ("LiteRT best_float32.tflite", "LiteRT best_float16.tflite", "ExecuTorch best.pte"):
        assert res[name]["rel_error"] <= res[name]["tolerance"]
    assert Path(files["tflite_fp16"]).stat().st_size < 0.6 * Path(files["tflite"]).stat().st_size
    assert not [p for p in Path(files["tflite"]).parent.iterdir() if p.name.startswith(".")], "temp file left"


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

    from models.export_mobile import coreml_summary

    d = Path(exported["results"]["files"]["coreml"])
    summary = coreml_summary(ct.models.MLModel(str(d), skip_model_load=True))
    assert summary["inputs"] == ["image"] and summary["outputs"] == ["output"]
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


def test_a_wrong_tflite_fails_its_check(exported, tmp_path):
    """A file that computes something else (a scaled output) is refused and not left behind."""
    patch = ("import torch, models.export_mobile as em\n"
             "real = em.DecodedHead\n"
             "class Scaled(torch.nn.Module):\n"
             "    def __init__(self, model):\n"
             "        super().__init__(); self.net = real(model)\n"
             "    def forward(self, x):\n"
             "        return self.net(x) * 1.01\n"
             "em.DecodedHead = Scaled")
    ckpt = own_copy(exported["ckpt"], tmp_path)
    r = export_cli("--weights", str(ckpt), "--include", "tflite", "--img-size", str(SIZE), prelude=patch)
    assert r.returncode == 1
    assert "LiteRT best_float32.tflite: relative error" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "best_float32.tflite").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


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


def test_the_conversions_left_jax_out_of_this_process(exported):
    """litert-torch's JAX must not load in the pytest process (its threads make later forks unsafe)."""
    assert "jax" not in sys.modules and "litert_torch" not in sys.modules
