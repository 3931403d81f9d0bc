"""Post-training INT8 quantization of exported detectors: calibration images, ONNX Runtime, NNCF.

Both quantizers see the same calibration batches: images of the dataset's train split, letterboxed
to the export size by :func:`utils.data.preprocess.preprocess` (the inference preprocessing), as
(1, 3, H, W) float32 in 0..1.

What the re-parameterized model needs to keep its accuracy in INT8 (:data:`RECIPE`; the measured
effect of each choice is in docs/benchmarks.md):

* activation ranges from the mean of per-image min/max (ONNX Runtime's ``CalibMovingAverage``;
  NNCF's default aggregation does the same), not the extremes over all calibration images: a few
  images with outlier activations widen the global ranges of the fused MobileOne/RepConv layers;
  percentile clipping recovers only part of that; entropy is offered as an option;
* per-channel weight scales: fused kernels sum several branches whose BatchNorm scales differ per
  output channel;
* the head's last convs and the decode tail stay in float: the decode puts pixel coordinates
  (0..640) and scores (0..1) into one concatenated tensor, where one 8-bit scale would round every
  confidence to 0 or 2.5 (a 640/256 step); an 8-bit head output (the logits) moves boxes by a
  logit step times stride/4 pixels. Every node after the neck is excluded (:func:`tail_nodes`
  with ``keep_head``); the three 1x1 head convs are a small share of the FLOPs;
* the stem conv (the one that reads the image) stays in float in the ONNX Runtime model: with 3
  input channels its int8 GEMM has a depth of only 27, too short for the int8 kernels to beat the fp32
  conv, and its input, the image, needs no quantize step then (:func:`stem_convs`);
* signed int8 weights, uint8 activations (the u8s8 kernels of x86 VNNI); ``reduce_range`` only on
  CPUs without VNNI, where the u8s8 dot product can saturate.
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from utils.atomic import atomic_path
from utils.cli import UserError, require
from utils.data.config import check_dataset
from utils.data.files import list_image_files
from utils.data.preprocess import preprocess, to_tensor
from utils.log import LOGGER

PathLike = Union[str, Path]
CALIB_METHODS = ("minmax", "entropy", "percentile")

#: The default INT8 recipe (keys are :func:`quantize_onnx` / :func:`quantize_openvino` options).
RECIPE: dict[str, Any] = {"method": "minmax", "moving_average": True, "keep_head": True, "per_channel": True,
                          "percentile": 99.999}


# --------------------------------------------------------------------------- calibration data
def split_images(data: Any, split: str = "train") -> list[str]:
    """Image files of ``data``'s ``split`` (a dataset yaml path or a checked dict)."""
    d = check_dataset(data, require=(split,))
    require(bool(d.get(split)), f"{d.get('yaml_file') or 'data'}: has no '{split}' split for calibration")
    files = list_image_files(d[split])[0]
    require(bool(files), f"{d.get('yaml_file') or 'data'}: no images in its '{split}' split ({d[split]})")
    return files


def pick_evenly(files: Sequence[str], n: int) -> list[str]:
    """``n`` files spread evenly over the sorted list (deterministic, covers the whole split)."""
    require(n >= 1, f"--calib-images {n}: must be at least 1")
    files = sorted(files)
    if n >= len(files):
        return files
    idx = np.unique(np.linspace(0, len(files) - 1, n).round().astype(int))
    return [files[i] for i in idx]


def load_images(files: Sequence[str], img_size: Sequence[int], stride: int) -> list[np.ndarray]:
    """(1, 3, H, W) float32 0..1 arrays: each file letterboxed to ``img_size`` (h, w) exactly."""
    import cv2


    out = []
    for f in files:
        im = cv2.imread(str(f))
        if im is None:
            LOGGER.warning(f"calibration: {f}: not a readable image, skipped")
            continue
        chw, _ = preprocess(im, list(img_size), stride, auto=False)
        out.append(to_tensor(chw).numpy())
    require(bool(out), "calibration: none of the chosen images could be read")
    return out


def calibration_images(data: Any, n: int, img_size: Sequence[int], stride: int,
                       split: str = "train") -> list[np.ndarray]:
    """``n`` letterboxed images of ``data``'s ``split`` as the calibration set."""
    images = load_images(pick_evenly(split_images(data, split), n), img_size, stride)
    LOGGER.info(f"calibration: {len(images)} {split} images at {img_size[0]}x{img_size[1]}")
    return images


# --------------------------------------------------------------------------- graph inspection
def tail_nodes(model: Any, keep_head: bool = False) -> list[str]:
    """Names of the ONNX nodes after the last convolutions (the decode), to keep in float.

    A node is in the tail when no Conv is reachable from it downstream. The head's final convs
    (Convs with nothing but tail below) are included too when ``keep_head``.
    """
    graph = model.graph
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for t in node.input:
            consumers.setdefault(t, []).append(i)
    conv_below = [False] * len(graph.node)  # a Conv is reachable downstream of node i
    for i in reversed(range(len(graph.node))):  # ONNX nodes are topologically sorted
        below = [j for t in graph.node[i].output for j in consumers.get(t, [])]
        conv_below[i] = any(graph.node[j].op_type == "Conv" or conv_below[j] for j in below)
    names = []
    for node, below in zip(graph.node, conv_below):
        if below:
            continue
        if node.op_type != "Conv" or keep_head:
            names.append(node.name)
    return names


def stem_convs(model: Any) -> list[str]:
    """Names of the Conv nodes that read a graph input directly (the stem: the image is their input)."""
    inputs = {i.name for i in model.graph.input}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input and n.input[0] in inputs]


def head_convs(model: Any) -> list[str]:
    """Names of the last Conv nodes (the Detect head's output convs)."""
    tail = set(tail_nodes(model, keep_head=True)) - set(tail_nodes(model, keep_head=False))
    return [n.name for n in model.graph.node if n.name in tail]


def has_vnni() -> bool:
    """True when /proc/cpuinfo lists an int8 dot-product extension (VNNI or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


# --------------------------------------------------------------------------- ONNX Runtime
def _reader(input_name: str, images: Sequence[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds the calibration images one by one."""

        def __init__(self) -> None:
            self.it: Iterator[np.ndarray] = iter(images)

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            x = next(self.it, None)
            return None if x is None else {input_name: x}

        def rewind(self) -> None:
            self.it = iter(images)

    return Reader()


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if method not in table:
        raise UserError(f"--calib-method {method}: choose from {', '.join(CALIB_METHODS)}")
    return table[method]


def entropy_ranges(model: Path, images: Sequence[np.ndarray], input_name: str, folder: Path) -> Path:
    """KL-divergence (entropy) activation ranges from 2048-bin histograms, as a calibration cache.

    ``quantize_static``'s own Entropy calibrator uses 128 histogram bins for 128 quantized bins,
    which leaves a single candidate threshold, the full range: the same scales as MinMax.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    cal = create_calibrator(str(model), augmented_model_path=str(folder / "augmented.onnx"),
                            calibrate_method=CalibrationMethod.Entropy,
                            extra_options={"num_bins": 2048, "num_quantized_bins": 128, "symmetric": False})
    cal.collect_data(_reader(input_name, images))
    cache = folder / "entropy_ranges.json"
    save_tensors_data(cal.compute_data(), cache)
    return cache


def quantize_onnx(src: PathLike, dst: PathLike, images: Sequence[np.ndarray], method: str = "minmax",
                  keep_head: bool = True, per_channel: bool = True, percentile: float = 99.999,
                  reduce_range: Optional[bool] = None, op_types: Optional[Sequence[str]] = None,
                  moving_average: bool = True, keep_stem: bool = True) -> dict[str, Any]:
    """Write the INT8 QDQ model of the fp32 ONNX file ``src`` to ``dst`` (atomically).

    Returns what was done: calibration method, excluded nodes, reduce_range.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reduce_range = (not has_vnni()) if reduce_range is None else bool(reduce_range)
    with tempfile.TemporaryDirectory(prefix="moy-quant-") as tmpd:
        pre = Path(tmpd) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        exclude = tail_nodes(model, keep_head) + (stem_convs(model) if keep_stem else [])
        input_name = model.graph.input[0].name
        extra = {"ActivationSymmetric": False, "WeightSymmetric": True, "CalibPercentile": float(percentile),
                 "CalibMovingAverage": bool(moving_average)}
        cache = entropy_ranges(pre, images, input_name, Path(tmpd)) if method == "entropy" else None
        with atomic_path(dst) as tmp:
            quantize_static(str(pre), str(tmp), _reader(input_name, images), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=_ort_method(method), extra_options=extra,
                            op_types_to_quantize=list(op_types) if op_types else None,
                            calibration_cache_path=cache)
    LOGGER.info(f"INT8 ONNX: {method} calibration (mean per-image ranges: {moving_average}) on {len(images)} "
                f"images, per-channel {per_channel}, "
                f"reduce_range {reduce_range}, {len(exclude)} tail nodes in float")
    return {"method": method, "moving_average": moving_average, "per_channel": per_channel,
            "reduce_range": reduce_range,
            "keep_head": keep_head, "keep_stem": keep_stem, "float_nodes": len(exclude),
            "calib_images": len(images)}


# --------------------------------------------------------------------------- OpenVINO / NNCF
def quantize_openvino(ov_model: Any, onnx_model: Any, images: Sequence[np.ndarray], method: str = "minmax",
                      keep_head: bool = True, **_: Any) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training quantization of an OpenVINO model converted from ``onnx_model``.

    The same tail as for ONNX Runtime stays in float (ignored by node name; the converter keeps
    ONNX names). ``method`` "minmax" uses NNCF's default range estimators; "percentile" and
    "entropy" use its quantile estimator (NNCF has no entropy calibration).
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    nncf.set_log_level(logging.WARNING)  # NNCF logs every node it leaves unquantized at INFO
    names = set(tail_nodes(onnx_model, keep_head))
    ov_names = {op.get_friendly_name() for op in ov_model.get_ops()}
    ignored = sorted(names & ov_names)
    adv = AdvancedQuantizationParameters()
    if method != "minmax":
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        adv.activations_range_estimator_params = RangeEstimatorParametersSet.QUANTILE
    qmodel = nncf.quantize(ov_model, nncf.Dataset(list(images)), preset=nncf.QuantizationPreset.MIXED,
                           subset_size=len(images), ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                           advanced_parameters=adv)
    LOGGER.info(f"INT8 OpenVINO: NNCF {method} on {len(images)} images, {len(ignored)} tail nodes in float")
    return qmodel, {"method": method, "keep_head": keep_head, "float_nodes": len(ignored),
                    "calib_images": len(images)}
