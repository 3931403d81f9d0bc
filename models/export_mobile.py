"""Converters to the phone runtimes: LiteRT (.tflite), ExecuTorch (.pte) and Core ML (.mlpackage).

Each starts from ``torch.export`` of the fused model's decoded graph (:class:`~models.export_graphs.DecodedHead`),
so the file holds the whole detector, decode included; NMS stays with the app (docs/deploy-mobile.md).
Routes (each keeps torch 2.14.1; the packages are in ``requirements-mobile.txt``):

- LiteRT: ``litert-torch`` converts the exported program (NHWC input, as camera frames come); ``ai-edge-quantizer``
  makes the float16-weight file (float casting) and the INT8 file (static, per-channel int8 weights, int8
  activations calibrated on train images). The detection head (its last convs and the decode, which mixes
  pixel coordinates with 0..1 scores) stays float, as in the ONNX / OpenVINO INT8 files.
- ExecuTorch: ``to_edge_transform_and_lower`` with the XNNPACK partitioner (fp32).
- Core ML: ``coremltools`` ML Program (fp16 compute precision by default, image input scaled by 1/255;
  ``int8``: linear 8-bit weights).

export.py verifies every file (fp32 and fp16 against a float64 reference, INT8 by mAP and agreement).
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from models.backend_mobile import require, write_tflite_meta
from models.export_graphs import DecodedHead, detect_head

HEAD_PATTERN = r".*Detect_\d+.*"  # LiteRT tensor names of the Detect module (its convs and the decode)


class NHWCInput(nn.Module):
    """``net`` taking (B, H, W, 3) input: the layout LiteRT apps feed."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))


def nhwc(img: torch.Tensor) -> torch.Tensor:
    return img.detach().cpu().float().permute(0, 2, 3, 1).contiguous()


# --------------------------------------------------------------------------- LiteRT
def write_tflite(model: nn.Module, img: torch.Tensor, f: Path, meta: dict) -> None:
    """float32 ``f`` of the fused ``model``'s decoded graph for inputs shaped like ``img`` (NCHW)."""
    litert_torch = require("litert_torch", "export.py --include tflite")
    net = NHWCInput(DecodedHead(model)).eval().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = litert_torch.convert(net, (nhwc(img),))
    edge.export(str(f))
    write_tflite_meta(f, meta)


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """The quantizer draws a tqdm bar per calibration op; a log is no place for them."""
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TQDM_DISABLE") if old is None else os.environ.__setitem__("TQDM_DISABLE", old)


def _quantizer(src: Path) -> Any:
    require("ai_edge_quantizer", "a float16 / INT8 .tflite")
    from ai_edge_quantizer import quantizer

    return quantizer.Quantizer(str(src))


def write_tflite_fp16(src: Path, f: Path, meta: dict) -> None:
    """``src`` (float32 .tflite) with its weights stored as float16 (compute stays float32 on CPUs)."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    q = _quantizer(src)
    q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                             algorithm_key=AlgorithmName.FLOAT_CASTING)
    f.write_bytes(bytes(q.quantize(enable_progress_report=False).quantized_model))
    write_tflite_meta(f, meta)


def write_tflite_int8(src: Path, f: Path, meta: dict, calib: Sequence[np.ndarray], keep_head: bool = True) -> dict:
    """Static INT8 ``f`` from ``src``: int8 per-channel weights and int8 activations calibrated on ``calib``
    ((1, 3, H, W) float arrays); the Detect module float unless ``keep_head`` is False (then only nothing
    but the quantizer's own choices stay float). Returns what was done (for the metadata)."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    q = _quantizer(src)
    q.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                        activation_num_bits=8, weight_num_bits=8)
    if keep_head:
        q.add_weight_only_config(regex=HEAD_PATTERN, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                 num_bits=8, algorithm_key=AlgorithmName.NO_QUANTIZE)
    data = {"serving_default": [{"args_0": np.ascontiguousarray(x.transpose(0, 2, 3, 1))} for x in calib]}
    with warnings.catch_warnings(), no_progress_bars():
        warnings.simplefilter("ignore")
        qsv = q.calibrate(data, num_threads=1)
        f.write_bytes(bytes(q.quantize(qsv, enable_progress_report=False).quantized_model))
    info = {"method": "ai-edge-quantizer static wi8/ai8 min-max", "calib_images": len(calib),
            "head": "float" if keep_head else "int8"}
    write_tflite_meta(f, dict(meta, int8=info))
    return info


# --------------------------------------------------------------------------- ExecuTorch
def write_executorch(model: nn.Module, img: torch.Tensor, f: Path, meta: dict) -> None:
    """``f``: an ExecuTorch program of the decoded graph lowered to XNNPACK, with a ``metadata`` method."""
    require("executorch", "export.py --include executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    net = DecodedHead(model).eval().cpu()
    blob = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(net, (img.detach().cpu().float(),))
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                           constant_methods={"metadata": blob})
        f.write_bytes(edge.to_executorch().buffer)


# --------------------------------------------------------------------------- Core ML
def write_coreml(model: nn.Module, img: torch.Tensor, d: Path, meta: dict, int8: bool = False) -> dict:
    """``d``: a Core ML ML Program (.mlpackage) with an RGB image input scaled to 0..1, the decoded output
    ``output`` (1, N, 5 + nc), fp16 compute, labels / stride / size in its metadata (and metadata.json
    beside the model inside the package). ``int8``: 8-bit linear weights. Returns a summary of the spec."""
    ct = require("coremltools", "export.py --include coreml")
    net = DecodedHead(model).eval().cpu()
    x = img.detach().cpu().float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(net, (x,)).run_decompositions({})
        ml = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                        inputs=[ct.ImageType(name="image", shape=tuple(x.shape), scale=1 / 255,
                                             color_layout=ct.colorlayout.RGB)],
                        outputs=[ct.TensorType(name="output")], compute_precision=ct.precision.FLOAT16)
        if int8:
            from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights
            ml = linear_quantize_weights(ml, OptimizationConfig(
                global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")))
    ml.short_description = f"{meta.get('source_weights', 'model')}: {detect_head(model).nc}-class detector"
    ml.user_defined_metadata.update({k: json.dumps(meta[k]) for k in ("names", "stride", "img_size", "strides")})
    ml.save(str(d))
    (d / "metadata.json").write_text(json.dumps(dict(meta, weights="int8" if int8 else "fp16")))
    return coreml_summary(ml)


def coreml_summary(ml: Any) -> dict:
    """Input and output names/shapes and the MIL op types of a Core ML model (what can be checked off Apple)."""
    spec = ml.get_spec()
    ops: set[str] = set()
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            ops.update(op.type for op in block.operations)
    shape = [int(v) for v in spec.description.output[0].type.multiArrayType.shape]
    return {"inputs": [i.name for i in spec.description.input], "outputs": [o.name for o in spec.description.output],
            "output_shape": shape, "ops": sorted(ops)}


__all__ = ["HEAD_PATTERN", "NHWCInput", "coreml_summary", "write_coreml", "write_executorch", "write_tflite",
           "write_tflite_fp16", "write_tflite_int8"]
