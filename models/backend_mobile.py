"""The phone formats export.py writes, loaded as :class:`~models.backend_base.Backend`\\ s.

- ``*.tflite``: the LiteRT interpreter (``ai-edge-litert``). The file takes NHWC float32 input (an app's
  camera frame layout) and returns the decoded predictions (1, N, 5 + nc); names, stride and size are in a
  ``metadata.json`` inside a zip archive appended to the flatbuffer (the interpreter ignores it).
- ``*.pte``: the ExecuTorch runtime; NCHW float32 input, decoded output; the metadata is the program's
  constant method ``metadata`` (JSON as uint8).
- ``*.mlpackage``: Core ML runs on Apple platforms only; here the package's metadata is read and running it
  is refused with one line saying so.

The packages are optional (``requirements-mobile.txt``): a missing one ends with one line naming that file.
"""
from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from models.backend_base import Backend, PathLike, apply_meta, default_threads
from utils.cli import UserError

MOBILE_REQUIREMENTS = "requirements-mobile.txt"
TFLITE_META = "metadata.json"


def require(module: str, what: str) -> Any:
    """Import an optional mobile package, or stop with one line naming the requirements file to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{what} needs the package of '{module}', not installed: "
                        f"python3 -m pip install -r {MOBILE_REQUIREMENTS}") from e


def read_tflite_meta(path: Path) -> dict[str, Any]:
    """The metadata export.py appended to a .tflite file (empty when there is none)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(TFLITE_META).decode())
    except (zipfile.BadZipFile, KeyError):
        return {}


def write_tflite_meta(path: Path, meta: dict[str, Any]) -> None:
    """Append ``meta`` as ``metadata.json`` in a zip archive after the flatbuffer (readable by any zip tool)."""
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(TFLITE_META, json.dumps(meta))


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """``x`` (float 0..1) as the input tensor wants it: as is for a float input, ``x / scale + zero_point``
    rounded for an integer one (a full-integer INT8 file)."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """A float32 copy of an output tensor (``(y - zero_point) * scale`` for an integer one)."""
    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


class TFLiteBackend(Backend):
    """A ``.tflite`` file written by export.py (float32, float16 weights or INT8), run by LiteRT's
    interpreter with its XNNPACK CPU delegate; ``threads`` sets the interpreter's threads. It takes one
    NHWC image at a time; batches are run image by image."""

    format = "tflite"

    def __init__(self, path: PathLike, device: torch.device, threads: Optional[int] = None, **_: Any):
        litert = require("ai_edge_litert.interpreter", "loading a .tflite file")
        super().__init__(path, device)
        try:
            self.interpreter = litert.Interpreter(model_path=str(self.path), num_threads=int(threads or
                                                                                         default_threads()))
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise UserError(f"{self.path}: not a readable LiteRT model ({str(e).splitlines()[0][:200]})") from e
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        _, h, w, _ = (int(v) for v in self.input["shape"])
        self.imgsz, self.batch = (h, w), None
        meta = read_tflite_meta(self.path)
        if not meta:
            raise UserError(f"{self.path}: no names/stride metadata; export it with export.py")
        apply_meta(self, meta, int(self.output["shape"][-1]) - 5)

    def _one(self, nhwc: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], quantize_input(nhwc, self.input))
        self.interpreter.invoke()
        return dequantize_output(self.interpreter.get_tensor(self.output["index"]), self.output)

    def __call__(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        nhwc = x.detach().cpu().float().permute(0, 2, 3, 1).contiguous().numpy()
        out = np.concatenate([self._one(nhwc[i:i + 1]) for i in range(len(nhwc))])
        return torch.from_numpy(out).to(self.device)


class ExecuTorchBackend(Backend):
    """A ``.pte`` program written by export.py (XNNPACK delegate, one image at its fixed size), run by
    ExecuTorch's runtime."""

    format = "executorch"

    def __init__(self, path: PathLike, device: torch.device, threads: Optional[int] = None, **_: Any):
        runtime = require("executorch.runtime", "loading a .pte file")
        super().__init__(path, device)
        try:
            program = runtime.Runtime.get().load_program(str(self.path))
        except (ValueError, RuntimeError) as e:
            raise UserError(f"{self.path}: not a readable ExecuTorch program ({str(e).splitlines()[0][:200]})") \
                from e
        if "metadata" not in program.method_names:
            raise UserError(f"{self.path}: no names/stride metadata; export it with export.py")
        meta = json.loads(bytes(program.load_method("metadata").execute([])[0].numpy().tolist()).decode())
        self.method = program.load_method("forward")
        apply_meta(self, meta, None)
        h, w = (int(v) for v in meta["img_size"])
        self.imgsz, self.batch = (h, w), None  # export.py writes batch-1 programs: batches run image by image

    def __call__(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        x = x.detach().cpu().float().contiguous()
        outs = [self.method.execute([x[i:i + 1]])[0] for i in range(len(x))]
        return torch.cat(outs).to(self.device)


class CoreMLBackend(Backend):
    """A ``.mlpackage`` written by export.py: its metadata is read (names, stride, size); Core ML itself runs
    only on Apple platforms, so calling it elsewhere stops with one line saying so."""

    format = "coreml"

    def __init__(self, path: PathLike, device: torch.device, **_: Any):
        super().__init__(path, device)
        meta_file = self.path / "metadata.json"
        if not meta_file.is_file():
            raise UserError(f"{self.path}: no metadata.json; export it with export.py")
        meta = json.loads(meta_file.read_text())
        apply_meta(self, meta, None)
        self.imgsz = tuple(int(v) for v in meta["img_size"])
        self.model = None
        ct = require("coremltools", "loading a .mlpackage")
        if sys.platform == "darwin":  # predictions need the Core ML framework
            self.model = ct.models.MLModel(str(self.path))

    def __call__(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        if self.model is None:
            raise UserError(f"{self.path}: Core ML runs on macOS / iOS only; run the .pt, .onnx or .tflite here")
        outs = []
        for im in x.detach().cpu().float().numpy():
            from PIL import Image

            rgb = Image.fromarray((im.transpose(1, 2, 0) * 255).round().astype(np.uint8))
            outs.append(torch.from_numpy(np.asarray(self.model.predict({"image": rgb})["output"])))
        return torch.cat(outs).float().to(self.device)


def is_tflite(p: Path) -> bool:
    return p.suffix.lower() == ".tflite"


def is_pte(p: Path) -> bool:
    return p.suffix.lower() == ".pte"


def is_mlpackage(p: Path) -> bool:
    return p.suffix.lower() == ".mlpackage"


__all__ = ["CoreMLBackend", "ExecuTorchBackend", "MOBILE_REQUIREMENTS", "TFLiteBackend", "is_mlpackage",
           "is_pte", "is_tflite", "read_tflite_meta", "require", "write_tflite_meta"]
