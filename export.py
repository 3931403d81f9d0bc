"""Export a trained detector (fused weights, TorchScript, ONNX, OpenVINO, NCNN, INT8), each file checked.

Usage:
    python export.py --weights best.pt                          # torchscript + onnx + fused (default)
    python export.py --weights best.pt --include onnx openvino ncnn
    python export.py --weights best.pt --include onnx openvino --int8 --data data/my.yaml
    python export.py --weights best.pt --include onnx --dynamic --simplify
    python export.py --weights best.pt --include onnx --end2end --topk-all 100 --conf-thres 0.25
    python export.py --weights best.pt --include onnx --end2end --max-wh 640   # YOLOv7's ORT (N, 7) output

Outputs are written beside the weights: ``best-fused.pt``, ``best.torchscript.pt``, ``best.onnx``,
``best-int8.onnx``, ``best_openvino_model/``, ``best_int8_openvino_model/``, ``best_ncnn_model/``.
Every file carries the class names, stride and image size it needs to be used alone (ONNX
metadata, TorchScript ``config.txt``, ``metadata.yaml`` in folders) and is written atomically:
it appears at its final path complete, or not at all.

Every artefact is made from the *fused* model (MobileOne, RepConv, Conv+BN and the IDetect
implicit layers re-parameterized) and checked before it is put in place:

* the reference is a float64 copy of the *unfused* model, run on one image (``--source``, else the
  first val image of ``--data``, else a seeded random image); ``e32 = max |ref64 - unfused32| /
  max |ref64|`` is the float32 unfused model's own error on that same input (the same measure,
  :func:`rel_error`, on the same outputs; for end2end graphs on the decoded predictions);
* the fused PyTorch model, the re-loaded fused checkpoint and every fp32 file (TorchScript, ONNX,
  OpenVINO, NCNN; loaded by ``models/backend.py``) must give ``max |ref64 - out| / max |ref64| <=
  max(--rtol, --rtol-factor * e32)`` (defaults 1e-4 and 10), all through :func:`verify_fp32`.
  Float32 rounding differs between checkpoints by orders of magnitude (a checkpoint with large
  activations rounds far more), so a fixed tolerance either refuses correct files or lets faults
  through. A correct float32 computation of the same network is about as far from float64 as the
  float32 model (a small multiple of e32; the ``--rtol`` floor covers outputs that round almost
  exactly), while a wrong fold is hundreds of times further (figures in docs/benchmarks.md, "Export
  accuracy"). In float64 the fold itself is exact. ``--fp16`` files get a fixed 1e-2 against the same
  reference;
* INT8 files (``--int8``) cannot match to a tolerance; they are checked by detection agreement
  with PyTorch on val images and by mAP@.5 on ``--data``'s val split (test.py): a drop beyond
  ``--int8-max-drop`` points fails the export and removes the file.

INT8: post-training static quantization calibrated on ``--calib-images`` train images of ``--data``
(letterboxed as at inference); ONNX Runtime QDQ for ONNX (per-channel int8 weights, uint8
activations whose ranges are the mean of per-image min/max), NNCF for OpenVINO. The head's last
convs and the decode stay in float. Why each choice: utils/quantize.py.

Output layouts (ONNX; other formats give the decoded predictions):
* default (``--grid``): ``output`` (B, N, 5 + nc) = pixel (cx, cy, w, h), objectness, class scores;
  ``--no-grid``: raw per-level head outputs ``output0..`` (B, na, ny, nx, 5 + nc).
* ``--end2end``: NMS in the graph (standard ``NonMaxSuppression`` op, runs in ONNX Runtime):
  ``num_dets`` (B, 1) int32, ``det_boxes`` (B, topk, 4) pixel xyxy, ``det_scores`` (B, topk),
  ``det_classes`` (B, topk) int32, padded with 0 / -1; score = obj * cls, class-aware NMS.
  With ``--max-wh N`` (YOLOv7's ONNX Runtime variant): one ``output`` (K, 7) of rows
  [batch_id, x0, y0, x1, y1, cls, score], classes offset by N pixels for class-aware NMS.
* ``--include-nms``: ``boxes`` (B, N, 4) pixel xyxy and ``scores`` (B, N, nc) = obj * cls, the
  inputs of an external NMS (TensorRT/DeepStream NMS plugins), as YOLOv7's include_nms head.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torchvision

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.backend import NCNNBackend, OpenVINOBackend, load_backend, ort_session_options  # noqa: E402
from models.experimental import attempt_load, fused_checkpoint  # noqa: E402
from models.export_graphs import (  # noqa: E402
    MAX_WH,
    BoxesScores,
    DecodedHead,
    End2End,
    End2EndORT,
    HeadMaps,
    RawHead,
    decoded,
    detect_head,
)
from utils.atomic import atomic_dir, atomic_path, write_text  # noqa: E402
from utils.boxes import non_max_suppression  # noqa: E402
from utils.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.data.preprocess import preprocess, to_tensor  # noqa: E402
from utils.export_checks import ExportError, Tolerance, _as_list, fp32_tolerance, worst_rel_error  # noqa: E402
from utils.log import LOGGER, colorstr, set_logging  # noqa: E402
from utils.quantize import (  # noqa: E402
    calibration_images,  # noqa: E402
    load_images,
    pick_evenly,
    quantize_onnx,  # noqa: E402
    quantize_openvino,  # noqa: E402
    split_images,
)
from utils.sizes import check_img_size  # noqa: E402
from utils.torch_utils import model_info, select_device  # noqa: E402

INCLUDE_CHOICES = ("torchscript", "onnx", "openvino", "ncnn", "tflite", "coreml", "executorch", "fused")
PHONE_FORMATS = ("tflite", "coreml", "executorch")  # one image at the export size (fixed); models/export_mobile.py
DEFAULT_INCLUDE = ("torchscript", "onnx", "fused")
FP16_RTOL = 1e-2
RTOL_FLOOR = 1e-4  # --rtol: accepted whatever the float32 error (e32 can be ~0 where outputs round exactly)
RTOL_FACTOR = 10.0  # --rtol-factor: multiples of the float32 unfused model's own error (worst seen: 6.6x)
END2END_LAYOUTS = ("end2end", "end2end_ort")
METADATA = "metadata.yaml"
FIXED_SIZE_FORMATS = ("torchscript", "onnx", "openvino", "onnx_int8", "openvino_int8")
INT8_FORMATS = ("onnx", "openvino", "tflite", "coreml")  # HxW set unless --dynamic


# --------------------------------------------------------------------------- options and context
@dataclass
class Options:
    """What to export and how (the keyword arguments of :func:`run`)."""

    include: list[str]
    img_size: list[int]
    batch_size: int = 1
    dynamic: bool = False
    dynamic_batch: bool = False
    simplify: bool = False
    opset: int = 17
    grid: bool = True
    end2end: bool = False
    include_nms: bool = False
    max_wh: Optional[int] = None
    topk_all: int = 100
    iou_thres: float = 0.45
    conf_thres: float = 0.25
    agnostic_nms: bool = False
    fp16: bool = False
    int8: bool = False
    data: Optional[str] = None
    calib_images: int = 300
    calib_method: str = "minmax"
    quantize_head: bool = False
    int8_max_drop: float = 1.0
    rtol: float = RTOL_FLOOR
    rtol_factor: float = RTOL_FACTOR
    threads: Optional[int] = None


@dataclass
class Context:
    """The fused model, the unfused float32 and float64 models every check compares against, the input."""

    weights: Path
    model: nn.Module  # fused, float32: what every file is made from
    unfused: nn.Module  # as loaded (float32, eval)
    unfused64: nn.Module  # float64 copy of ``unfused`` on the CPU: the reference
    img: torch.Tensor
    meta: dict
    device: torch.device
    results: dict = field(default_factory=lambda: {"files": {}})
    references: dict = field(default_factory=dict)  # (layout, id(img)) -> (img, Reference)

    @property
    def stem(self) -> Path:
        return self.weights.with_suffix("")


def check_options(o: Options) -> None:
    """Refuse option combinations that cannot give a working file, naming the flag."""
    bad = [x for x in o.include if x not in INCLUDE_CHOICES]
    if bad:
        raise ExportError(f"--include {bad}: unknown format(s); choose from {list(INCLUDE_CHOICES)}")
    if (o.end2end or o.include_nms) and not o.grid:
        raise ExportError(f"{'--end2end' if o.end2end else '--include-nms'} needs the decoded output: drop --no-grid")
    if o.end2end and o.include_nms:
        raise ExportError("--end2end and --include-nms are two different graphs: choose one")
    if (o.end2end or o.include_nms) and "onnx" not in o.include:
        raise ExportError(f"{'--end2end' if o.end2end else '--include-nms'} applies to the ONNX export: "
                          f"add onnx to --include")
    if o.end2end and o.opset < 11:
        raise ExportError(f"--end2end needs --opset >= 11 (NonMaxSuppression), got {o.opset}")
    checks = [(o.topk_all >= 1, f"--topk-all {o.topk_all}: must be at least 1 (0 keeps no detection)"),
              (o.max_wh is None or o.max_wh >= 1, f"--max-wh {o.max_wh}: must be a positive pixel offset"),
              (o.batch_size >= 1, f"--batch-size {o.batch_size}: must be at least 1"),
              (0 <= o.iou_thres <= 1, f"--iou-thres {o.iou_thres}: must be in 0..1"),
              (0 <= o.conf_thres <= 1, f"--conf-thres {o.conf_thres}: must be in 0..1"),
              (o.rtol >= 0, f"--rtol {o.rtol}: must be >= 0"),
              (o.rtol_factor >= 0, f"--rtol-factor {o.rtol_factor}: must be >= 0"),
              (o.calib_images >= 1, f"--calib-images {o.calib_images}: must be at least 1"),
              (len(o.img_size) == 2 and min(o.img_size) > 0, f"--img-size {o.img_size}: one or two positive sizes"),
              (not o.int8 or o.data or not {"onnx", "openvino", "tflite"} & set(o.include),
               "--int8 needs --data (a dataset yaml: calibration and the mAP check)"),
              (not o.int8 or set(INT8_FORMATS) & set(o.include),
               f"--int8 applies to {', '.join(INT8_FORMATS)}: add one")]
    for ok, msg in checks:
        if not ok:
            raise ExportError(msg)


def verify_image(o: Options, source: Optional[str]) -> Optional[str]:
    """The real image the checks run on: ``--source``, else the first val image of ``--data``."""
    if source or not o.data:
        return source

    return sorted(split_images(o.data, "val"))[0]


def make_input(img_size: Sequence[int], batch_size: int, stride: int, device: torch.device,
               source: Optional[str] = None) -> torch.Tensor:
    """A (B, 3, H, W) float image in [0, 1]: the letterboxed ``source`` image, else seeded noise."""
    h, w = img_size
    if source:
        import cv2

        im0 = cv2.imread(str(source))
        if im0 is None:
            raise ExportError(f"--source {source}: not a readable image")
        img = to_tensor(preprocess(im0, (h, w), stride, auto=False)[0]).repeat(batch_size, 1, 1, 1)
    else:
        g = torch.Generator().manual_seed(0)
        img = torch.rand((batch_size, 3, h, w), generator=g)
    return img.to(device)


def model_meta(model: nn.Module, weights: Path, o: Options) -> dict:
    """Names, stride, image size, anchors: what a file needs to be used without the checkpoint."""
    head = detect_head(model)
    strides = [float(s) for s in head.stride]
    return {"names": list(getattr(model, "names", []) or []), "stride": int(max(strides)), "nc": int(head.nc),
            "img_size": list(o.img_size), "batch_size": o.batch_size, "dynamic": o.dynamic,
            "grid": o.grid, "end2end": False, "strides": strides,
            "anchors": head.anchor_grid.detach().cpu().reshape(head.nl, -1, 2).tolist(),
            "source_weights": weights.name}


def prepare(weights: Path, o: Options, device: str, source: Optional[str]) -> Context:
    """Load and fuse the model, check fusing on the verification image; the shared export context."""
    dev = select_device(device)
    ckpt_fused = bool(load_checkpoint(weights).get("fused", False))
    model0 = attempt_load(weights, map_location=dev, fuse=False).eval()
    stride = int(model0.stride.max())
    o.img_size = [check_img_size(int(x), stride) for x in o.img_size]
    source = verify_image(o, source)
    img = make_input(o.img_size, o.batch_size, stride, dev, source)
    LOGGER.info(f"{colorstr('export:')} {weights} ({'fused' if ckpt_fused else 'training'} checkpoint), "
                f"input {tuple(img.shape)} ({'image ' + str(source) if source else 'seeded random image'})")
    info0 = model_info(model0, img_size=o.img_size)
    model = model0 if ckpt_fused else copy.deepcopy(model0).fuse().eval()
    info1 = model_info(model, img_size=o.img_size)
    model64 = copy.deepcopy(model0).cpu().double().eval()
    ctx = Context(weights, model, model0, model64, img, model_meta(model, weights, o), dev)
    ctx.results["params"] = (info0["parameters"], info1["parameters"])
    ctx.results["gflops"] = (info0["gflops"], info1["gflops"])
    g0, g1 = (f"{i['gflops']:.2f}" if i["gflops"] is not None else "?" for i in (info0, info1))
    LOGGER.info(f"{colorstr('fuse:')} parameters {info0['parameters']:,} -> {info1['parameters']:,}, "
                f"GFLOPs {g0} -> {g1} at {o.img_size[0]}x{o.img_size[1]}")
    verify_fp32("fused model (PyTorch)", ctx, o, [decoded(model, img).cpu()])
    ctx.results["checkpoint_fused"] = ckpt_fused
    return ctx


# --------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Reference:
    """Float64 outputs of the unfused model on one input, and the float32 unfused model's own
    relative error there (on the same outputs; on the decoded predictions for end2end graphs)."""

    outputs: list[torch.Tensor]
    e32: float


Graph = Callable[[nn.Module], nn.Module]


@torch.no_grad()
def reference(ctx: Context, img: torch.Tensor, graph: Graph = DecodedHead, layout: str = "decoded") -> Reference:
    """The :class:`Reference` of ``graph(model)`` on ``img`` (computed once per layout and input).

    ``graph`` wraps a model into the exported graph (decoded, raw, end2end, ...); it is applied
    to the float64 and the float32 unfused model. An end2end graph's detections cannot be
    compared in float32 noise, so its ``e32`` is that of the decoded predictions it selects from.
    """
    key = (layout, id(img))
    if key not in ctx.references:
        refs = [r.cpu() for r in _as_list(graph(ctx.unfused64).eval()(img.detach().cpu().double()))]
        scale = DecodedHead if layout in END2END_LAYOUTS else graph
        scale_refs = refs if scale is graph else _as_list(scale(ctx.unfused64).eval()(img.detach().cpu().double()))
        outs32 = [r.cpu() for r in _as_list(scale(ctx.unfused).eval()(img))]
        ctx.references[key] = (img, Reference(refs, worst_rel_error(scale_refs, outs32)[1]))
    return ctx.references[key][1]


def verify_fp32(name: str, ctx: Context, o: Options, outs: Sequence[Any], img: Optional[torch.Tensor] = None,
                graph: Graph = DecodedHead, layout: str = "decoded", fp16: bool = False) -> None:
    """The one check of every float file: ``outs`` (of ``graph`` on ``img``, default the export
    input) against the float64 unfused model, within :func:`fp32_tolerance` (``fp16``: :func:`fp16_tolerance`)."""
    img = ctx.img if img is None else img
    ref = reference(ctx, img, graph, layout)
    tol = fp16_tolerance(ctx, o, img, graph, ref) if fp16 else fp32_tolerance(ref.e32, o.rtol, o.rtol_factor)
    check = {"end2end": _end2end_check, "end2end_ort": _ort7_check}.get(layout, _check)
    check(name, ref.outputs, list(outs), tol, ctx.results)
    ctx.results[name].update(float32_error=ref.e32, tolerance=tol.value)


@torch.no_grad()
def fp16_tolerance(ctx: Context, o: Options, img: torch.Tensor, graph: Graph, ref: Reference) -> Tolerance:
    """``max(FP16_RTOL, --rtol-factor x e16)``: e16 is the error of the fused model with its weights rounded
    to float16 (what an fp16-weight file computes) against the float64 reference on the same input, so a
    checkpoint whose activations are large gets the tolerance its own weights' rounding needs."""
    key = ("fp16", id(img))
    if key not in ctx.references:
        model16 = copy.deepcopy(ctx.model).cpu().float()
        for t in list(model16.parameters()) + list(model16.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
        outs = [r.cpu() for r in _as_list(graph(model16).eval()(img.detach().cpu().float()))]
        ctx.references[key] = (img, worst_rel_error(ref.outputs, outs)[1])
    e16 = ctx.references[key][1]
    return Tolerance(max(FP16_RTOL, o.rtol_factor * e16),
                     f"max({FP16_RTOL:g}, --rtol-factor {o.rtol_factor:g} x float16-weight error {e16:.3g})")


def _verdict(name: str, what: str, rel: float, tol: Tolerance) -> None:
    """Log the check's line; raise the one-line error when ``rel`` is beyond ``tol``."""
    ok = rel <= tol.value
    LOGGER.info(f"{colorstr('verify:')} {name}: {what}, relative {rel:.3g} vs float64 (tolerance {tol}) "
                f"{'OK' if ok else 'FAILED'}")
    if not ok:
        raise ExportError(f"{name}: relative error {rel:.3g} against the float64 model exceeds the tolerance {tol}")


def _check(name: str, refs: list[torch.Tensor], outs: list, tol: Tolerance, results: dict) -> None:
    if len(refs) != len(outs):
        raise ExportError(f"{name}: {len(outs)} outputs, PyTorch has {len(refs)}")
    worst_abs, worst_rel = worst_rel_error(refs, outs)
    results[name] = {"max_abs_diff": worst_abs, "rel_error": worst_rel}
    _verdict(name, f"max abs diff {worst_abs:.3g}", worst_rel, tol)


def _match_boxes(name: str, i: int, rb, rc, ob, oc) -> float:
    """Largest coordinate difference after matching each output box to a PyTorch box of its class."""
    free = np.ones(len(rb), dtype=bool)
    worst = 0.0
    for j in range(len(ob)):
        cand = np.flatnonzero(free & (rc == oc[j]))
        if not len(cand):
            raise ExportError(f"{name}: image {i}: detection {j} (class {int(oc[j])}) has no PyTorch match")
        d = np.abs(rb[cand] - ob[j]).max(1)
        k = int(d.argmin())
        free[cand[k]] = False
        worst = max(worst, float(d[k]))
    return worst


def _end2end_check(name: str, refs: list[torch.Tensor], outs: list, tol: Tolerance, results: dict) -> None:
    """Same detections per image: equal num_dets, scores within ``tol``, and every box matched to a
    PyTorch box of the same class within ``tol * max|box|`` (detections whose scores differ only
    by rounding may come in either order)."""
    n_ref, n_out = refs[0].cpu().numpy().reshape(-1), np.asarray(outs[0]).reshape(-1)
    if not np.array_equal(n_ref, n_out):
        raise ExportError(f"{name}: num_dets {n_out.tolist()} differ from PyTorch's {n_ref.tolist()} "
                          f"(a box at the score or IoU threshold within rounding, or a faulty graph)")
    worst_abs, worst_rel = 0.0, 0.0
    for i, n in enumerate(n_ref.tolist()):
        if n == 0:
            continue
        rb, rs, rc = (refs[k][i, :n].detach().cpu().double().numpy() for k in (1, 2, 3))
        ob, os_, oc = (np.asarray(outs[k][i, :n], dtype=np.float64) for k in (1, 2, 3))
        s_abs = float(np.abs(rs - os_).max())  # both sorted by decreasing score
        b_abs = _match_boxes(name, i, rb, rc, ob, oc)
        worst_abs = max(worst_abs, s_abs, b_abs)
        worst_rel = max(worst_rel, s_abs / max(float(np.abs(rs).max()), 1e-12),
                        b_abs / max(float(np.abs(rb).max()), 1e-12))
    results[name] = {"max_abs_diff": worst_abs, "rel_error": worst_rel, "num_dets": n_ref.tolist()}
    _verdict(name, f"num_dets {n_ref.tolist()} equal, max abs diff {worst_abs:.3g}", worst_rel, tol)


def _ort7_check(name: str, refs: list[torch.Tensor], outs: list, tol: Tolerance, results: dict) -> None:
    """The (K, 7) ORT end2end output: per image the same number of rows, each matched to a PyTorch
    row of its class within ``tol`` (boxes) and the sorted scores within ``tol``."""
    r, o = refs[0].detach().cpu().double().numpy(), np.asarray(outs[0], dtype=np.float64)
    if r.shape != o.shape:
        raise ExportError(f"{name}: {len(o)} detections, PyTorch has {len(r)}")
    b_abs, s_abs = 0.0, 0.0
    for b in np.unique(r[:, 0]):
        rb, ob = r[r[:, 0] == b], o[o[:, 0] == b]
        if len(rb) != len(ob):
            raise ExportError(f"{name}: image {int(b)}: {len(ob)} detections, PyTorch has {len(rb)}")
        b_abs = max(b_abs, _match_boxes(name, int(b), rb[:, 1:5], rb[:, 5], ob[:, 1:5], ob[:, 5]))
        s_abs = max(s_abs, float(np.abs(np.sort(rb[:, 6]) - np.sort(ob[:, 6])).max()))
    rel = max(b_abs / max(float(np.abs(r[:, 1:5]).max(initial=0)), 1e-12),
              s_abs / max(float(np.abs(r[:, 6]).max(initial=0)), 1e-12))
    results[name] = {"max_abs_diff": max(b_abs, s_abs), "rel_error": rel, "detections": len(r)}
    _verdict(name, f"{len(r)} detections matched", rel, tol)


# --------------------------------------------------------------------------- exporters
def export_fused_checkpoint(ctx: Context, o: Options) -> Path:
    """Save ``fused_checkpoint(model)`` beside the weights, re-load it with ``attempt_load`` and compare."""
    if ctx.results.get("checkpoint_fused"):
        LOGGER.info(f"{colorstr('fused:')} {ctx.weights} is already a fused checkpoint; not re-written")
        return ctx.weights
    t, f = time.time(), Path(f"{ctx.stem}-fused.pt")
    save_checkpoint(fused_checkpoint(ctx.model), f)
    reloaded = attempt_load(f, map_location=ctx.device)
    verify_fp32(f"fused checkpoint {f.name} (re-loaded)", ctx, o, [decoded(reloaded, ctx.img).cpu()])
    LOGGER.info(f"{colorstr('fused:')} saved {f} ({f.stat().st_size / 1e6:.1f} MB, {time.time() - t:.1f}s)")
    return f


def output_net(model: nn.Module, o: Options) -> tuple[nn.Module, list[str], str]:
    """(``model`` wrapped as the ONNX graph to write, output names, layout): decoded, raw, end2end or
    include-nms. Applied to the fused model for the file and to the unfused models for the reference."""
    head = detect_head(model)
    if o.end2end and o.max_wh is not None:
        return End2EndORT(model, o.topk_all, o.iou_thres, o.conf_thres, o.agnostic_nms, o.max_wh), \
            ["output"], "end2end_ort"
    if o.end2end:
        return End2End(model, o.topk_all, o.iou_thres, o.conf_thres, o.agnostic_nms), \
            ["num_dets", "det_boxes", "det_scores", "det_classes"], "end2end"
    if o.include_nms:
        return BoxesScores(model), ["boxes", "scores"], "include_nms"
    if not o.grid:
        return RawHead(model), [f"output{i}" for i in range(int(head.nl))], "raw"
    return DecodedHead(model), ["output"], "decoded"


def export_torchscript(ctx: Context, o: Options) -> Path:
    """Trace the decoded (or raw) graph, save with the metadata as ``config.txt``, re-load and compare."""
    t, f = time.time(), Path(f"{ctx.stem}.torchscript.pt")
    graph, layout = (DecodedHead, "decoded") if o.grid else (RawHead, "raw")
    net = graph(ctx.model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(net, ctx.img, strict=False, check_trace=False)
    with atomic_path(f) as tmp:
        ts.save(str(tmp), _extra_files={"config.txt": json.dumps(ctx.meta)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
            loaded = torch.jit.load(str(tmp), map_location=ctx.img.device)
        with torch.no_grad():
            outs = [r.cpu() for r in _as_list(loaded(ctx.img))]
        verify_fp32(f"TorchScript {f.name}", ctx, o, outs, graph=graph, layout=layout)
    LOGGER.info(f"{colorstr('TorchScript:')} saved {f} ({f.stat().st_size / 1e6:.1f} MB, {time.time() - t:.1f}s)")
    return f


def _dynamic_axes(o: Options, output_names: list[str], layout: str) -> Optional[dict]:
    """ONNX dynamic axes: batch (``--dynamic-batch``) or batch, height and width (``--dynamic``)."""
    if not (o.dynamic or o.dynamic_batch):
        return None
    axes: dict[str, dict[int, str]] = {"images": {0: "batch", 2: "height", 3: "width"} if o.dynamic
                                       else {0: "batch"}}
    for name in output_names:
        if layout == "end2end_ort":  # (K, 7) rows of all images
            axes[name] = {0: "detections"}
        elif layout == "end2end" or not o.dynamic:
            axes[name] = {0: "batch"}
        elif layout == "raw":  # (B, na, ny, nx, no) per level
            axes[name] = {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
        else:  # decoded / include_nms: (B, N, ...)
            axes[name] = {0: "batch", 1: "anchors"}
    return axes


def write_onnx(net: nn.Module, img: torch.Tensor, f: Path, meta: dict, output_names: list[str],
               o: Options, layout: str) -> None:
    """torch.onnx.export (TorchScript-based exporter) to ``f``, checker, optional onnxslim, metadata."""
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, img, str(f), dynamo=False, opset_version=o.opset, do_constant_folding=True,
                          input_names=["images"], output_names=output_names,
                          dynamic_axes=_dynamic_axes(o, output_names, layout))
    model_onnx = onnx.load(str(f))
    onnx.checker.check_model(model_onnx)
    if o.simplify:
        import onnxslim
        n0 = len(model_onnx.graph.node)
        model_onnx = onnxslim.slim(model_onnx)
        onnx.checker.check_model(model_onnx)
        LOGGER.info(f"{colorstr('ONNX:')} simplified with onnxslim {onnxslim.__version__}: "
                    f"{n0} -> {len(model_onnx.graph.node)} nodes")
    set_onnx_meta(model_onnx, meta)
    onnx.checker.check_model(model_onnx)
    onnx.save(model_onnx, str(f))


def set_onnx_meta(model_onnx: Any, meta: dict) -> None:
    """Replace the model's ``metadata_props`` with ``meta`` (values as JSON)."""
    del model_onnx.metadata_props[:]
    for k, v in meta.items():
        entry = model_onnx.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)


def _ort_outputs(f: Path, img: torch.Tensor, threads: Optional[int]) -> list[np.ndarray]:
    """Every output of the ONNX file as ONNX Runtime computes it (any layout, with the runtime's settings)."""
    import onnxruntime as ort


    sess = ort.InferenceSession(str(f), sess_options=ort_session_options(threads), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: img.detach().cpu().numpy()})


def export_onnx(ctx: Context, o: Options) -> Path:
    """Export the chosen graph, check it, run it in ONNX Runtime (and at a second shape when dynamic)."""
    t, f = time.time(), Path(f"{ctx.stem}.onnx")
    net, out_names, layout = output_net(ctx.model, o)
    net.eval()

    def graph(model: nn.Module) -> nn.Module:
        return output_net(model, o)[0]

    meta = dict(ctx.meta, dynamic=o.dynamic, dynamic_batch=o.dynamic_batch, layout=layout,
                end2end=layout.startswith("end2end"))
    if o.end2end:
        meta.update(topk_all=o.topk_all, iou_thres=o.iou_thres, conf_thres=o.conf_thres,
                    agnostic_nms=o.agnostic_nms, max_wh=o.max_wh if o.max_wh is not None else MAX_WH)
    with atomic_path(f) as tmp:
        write_onnx(net, ctx.img, tmp, meta, out_names, o, layout)
        ctx.results["onnx_checker"] = "passed"
        verify_fp32(f"ONNX Runtime {f.name}", ctx, o, _ort_outputs(tmp, ctx.img, o.threads), graph=graph,
                    layout=layout)
        if o.dynamic or o.dynamic_batch:  # a second batch size (and image size) through the same graph
            b, _, h, w = ctx.img.shape
            s = int(ctx.meta["stride"]) if o.dynamic else 0
            img2 = torch.rand((b + 1, 3, h + s, max(s, w - s) if s else w),
                              generator=torch.Generator().manual_seed(1)).to(ctx.img.device)
            verify_fp32(f"ONNX Runtime {f.name} dynamic {tuple(img2.shape)}", ctx, o,
                        _ort_outputs(tmp, img2, o.threads), img=img2, graph=graph, layout=layout)
    LOGGER.info(f"{colorstr('ONNX:')} saved {f} (opset {o.opset}, {f.stat().st_size / 1e6:.1f} MB, "
                f"{time.time() - t:.1f}s)")
    return f


def plain_onnx(ctx: Context, o: Options, folder: Path) -> Path:
    """The decoded-output fp32 ONNX graph in ``folder`` (input of OpenVINO and of INT8 calibration)."""
    f = folder / "decoded.onnx"
    plain = copy.copy(o)
    plain.simplify = False
    write_onnx(DecodedHead(ctx.model).eval(), ctx.img, f, dict(ctx.meta, dynamic=o.dynamic), ["output"],
               plain, "decoded")
    return f


def _write_folder_meta(folder: Path, meta: dict) -> None:
    import yaml

    write_text(folder / METADATA, yaml.safe_dump(meta, sort_keys=False))


def _compare_backend(name: str, backend: Any, ctx: Context, o: Options) -> None:
    """A folder format's decoded predictions on the export input through ``models/backend.py``."""
    with torch.no_grad():
        out = backend(ctx.img)
    verify_fp32(name, ctx, o, [out.cpu()], fp16=o.fp16)


def export_openvino(ctx: Context, o: Options, src_onnx: Path) -> Path:
    """``<stem>_openvino_model/``: OpenVINO IR (.xml/.bin, fp32 or fp16 weights) plus metadata.yaml."""
    import openvino as ov


    t, d = time.time(), Path(f"{ctx.stem}_openvino_model")
    ov_model = ov.convert_model(str(src_onnx))
    with atomic_dir(d) as tmp:
        ov.save_model(ov_model, str(tmp / f"{ctx.stem.name}.xml"), compress_to_fp16=o.fp16)
        _write_folder_meta(tmp, dict(ctx.meta, dynamic=o.dynamic, format="openvino", fp16=o.fp16))
        _compare_backend(f"OpenVINO {d.name}", OpenVINOBackend(tmp, ctx.device, threads=o.threads), ctx, o)
    LOGGER.info(f"{colorstr('OpenVINO:')} saved {d} (openvino {ov.__version__}, {time.time() - t:.1f}s)")
    return d


def run_pnnx(ts_file: Path, img: torch.Tensor, stride: int, out: Path, fp16: bool) -> None:
    """Convert the traced ``ts_file`` to ``out/model.ncnn.param|bin`` with pnnx (dynamic H and W)."""
    import pnnx

    _, c, h, w = img.shape
    side = ts_file.parent
    cmd = [pnnx.EXEC_PATH, str(ts_file), f"inputshape=[1,{c},{h},{w}]f32",
           f"inputshape2=[1,{c},{h + 2 * stride},{w + stride}]f32", "device=cpu", f"fp16={int(fp16)}",
           f"ncnnparam={out / 'model.ncnn.param'}", f"ncnnbin={out / 'model.ncnn.bin'}",
           f"ncnnpy={side / 'model_ncnn.py'}", f"pnnxparam={side / 'model.pnnx.param'}",
           f"pnnxbin={side / 'model.pnnx.bin'}", f"pnnxpy={side / 'model_pnnx.py'}",
           f"pnnxonnx={side / 'model.pnnx.onnx'}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not (out / "model.ncnn.param").is_file():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ExportError(f"pnnx failed (exit {r.returncode}): {tail[0][:200]}")


def export_ncnn(ctx: Context, o: Options) -> Path:
    """``<stem>_ncnn_model/``: ncnn .param/.bin of the head maps (pnnx) plus metadata.yaml."""
    t, d = time.time(), Path(f"{ctx.stem}_ncnn_model")
    net = HeadMaps(ctx.model).eval()
    img1 = ctx.img[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(net, img1, strict=False, check_trace=False)
    with tempfile.TemporaryDirectory(prefix="moy-pnnx-") as side, atomic_dir(d) as tmp:
        ts.save(str(Path(side) / "model.pt"))
        run_pnnx(Path(side) / "model.pt", img1, int(ctx.meta["stride"]), tmp, o.fp16)
        _write_folder_meta(tmp, dict(ctx.meta, dynamic=True, batch_size=1, format="ncnn", fp16=o.fp16,
                                     layout="head_maps"))
        _compare_backend(f"NCNN {d.name}", NCNNBackend(tmp, ctx.device, threads=o.threads), ctx, o)
    LOGGER.info(f"{colorstr('NCNN:')} saved {d} ({time.time() - t:.1f}s)")
    return d


# --------------------------------------------------------------------------- INT8
def export_onnx_int8(ctx: Context, o: Options, src_onnx: Path, calib: list) -> Path:
    """``<stem>-int8.onnx``: ONNX Runtime static QDQ quantization of the decoded fp32 graph."""
    import onnx


    f = Path(f"{ctx.stem}-int8.onnx")
    info = quantize_onnx(src_onnx, f, calib, method=o.calib_method, keep_head=not o.quantize_head)
    model_onnx = onnx.load(str(f))
    set_onnx_meta(model_onnx, dict(ctx.meta, dynamic=o.dynamic, layout="decoded", int8=info))
    with atomic_path(f) as tmp:
        onnx.save(model_onnx, str(tmp))
    return f


def export_openvino_int8(ctx: Context, o: Options, src_onnx: Path, calib: list) -> Path:
    """``<stem>_int8_openvino_model/``: NNCF post-training quantization of the OpenVINO model."""
    import onnx
    import openvino as ov


    d = Path(f"{ctx.stem}_int8_openvino_model")
    qmodel, info = quantize_openvino(ov.convert_model(str(src_onnx)), onnx.load(str(src_onnx)), calib,
                                     method=o.calib_method, keep_head=not o.quantize_head)
    with atomic_dir(d) as tmp:
        ov.save_model(qmodel, str(tmp / f"{ctx.stem.name}.xml"), compress_to_fp16=False)
        _write_folder_meta(tmp, dict(ctx.meta, dynamic=o.dynamic, format="openvino", int8=info))
    return d


def verify_int8(ctx: Context, o: Options, path: Path, src_onnx: Path) -> dict:
    """mAP@.5 and mAP@.5:.95 of ``path`` and of the fp32 graph ``src_onnx`` on the val split (test.py), plus
    detection agreement on val images; a mAP@.5 drop beyond ``--int8-max-drop`` removes the file."""
    from test import test as evaluate

    common = dict(batch_size=1, imgsz=max(o.img_size), plots=False, device="cpu", workers=0, threads=o.threads,
                  progress=False, verbose=False)
    maps = ctx.results.setdefault("fp32_maps", {})  # per fp32 file of the same input layout
    if str(src_onnx) not in maps:
        maps[str(src_onnx)] = tuple(evaluate(o.data, weights=str(src_onnx), **common)[0][2:4])
        ctx.results.setdefault("fp32_map", maps[str(src_onnx)])
    q50, q95 = evaluate(o.data, weights=str(path), **common)[0][2:4]
    agree = detection_agreement(ctx.model, load_backend(path, "cpu", threads=o.threads), val_images(ctx, o))
    m50, m95 = maps[str(src_onnx)]
    res = {"map50": q50, "map": q95, "fp32_map50": m50, "fp32_map": m95, "agreement": agree}
    LOGGER.info(f"{colorstr('verify:')} INT8 {path.name}: mAP@.5 {q50:.4f} (fp32 {m50:.4f}), mAP@.5:.95 "
                f"{q95:.4f} (fp32 {m95:.4f}), detection agreement with PyTorch {agree:.3f}")
    if (m50 - q50) * 100 > o.int8_max_drop:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise ExportError(f"INT8 {path.name}: mAP@.5 drops {100 * (m50 - q50):.2f} points "
                          f"(> --int8-max-drop {o.int8_max_drop}); removed")
    return res


def val_images(ctx: Context, o: Options, n: int = 20) -> list[torch.Tensor]:
    """Up to ``n`` val images of ``--data`` letterboxed to the export size (agreement check)."""
    ims = load_images(pick_evenly(split_images(o.data, "val"), n), o.img_size, int(ctx.meta["stride"]))
    return [torch.from_numpy(x) for x in ims]


@torch.no_grad()
def detection_agreement(model: nn.Module, backend: Any, images: Sequence[torch.Tensor], conf: float = 0.25,
                        iou: float = 0.5) -> float:
    """Share of detections (conf >= ``conf`` after NMS) of either model that the other one also
    makes: same class and IoU >= ``iou``. 1.0 when neither detects anything."""
    found, total = 0, 0
    for x in images:
        r = non_max_suppression(decoded(model, x.to(ctx_device(model))).cpu(), conf, 0.45)[0]
        q = non_max_suppression(backend(x).cpu().float(), conf, 0.45)[0]
        total += len(r) + len(q)
        if len(r) and len(q):
            same = (r[:, 5:6] == q[:, 5].unsqueeze(0)).float()
            ious = torchvision.ops.box_iou(r[:, :4], q[:, :4]) * same
            found += int((ious.max(1).values >= iou).sum()) + int((ious.max(0).values >= iou).sum())
    return 1.0 if total == 0 else found / total


def ctx_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters."""
    return next(model.parameters()).device


def export_int8(ctx: Context, o: Options, src_onnx: Path) -> None:
    """INT8 ONNX and/or OpenVINO from the decoded fp32 graph, calibrated on ``--data``'s train images."""
    calib = calibration_images(o.data, o.calib_images, o.img_size, int(ctx.meta["stride"]))
    for fmt, fn in (("onnx", export_onnx_int8), ("openvino", export_openvino_int8)):
        if fmt in o.include:
            path = fn(ctx, o, src_onnx, calib)
            ctx.results[f"{fmt}_int8"] = verify_int8(ctx, o, path, src_onnx)
            ctx.results["files"][f"{fmt}_int8"] = str(path)


# --------------------------------------------------------------------------- phones (models/export_mobile.py)
def phone_input(ctx: Context, o: Options) -> torch.Tensor:
    """One image at the export size: phone runtimes take single camera frames of a fixed size."""
    if o.dynamic or o.batch_size > 1:
        LOGGER.info(f"{colorstr('phones:')} tflite / coreml / executorch files take one {o.img_size[0]}x"
                    f"{o.img_size[1]} image (--dynamic and --batch-size apply to the other formats)")
    return ctx.img[:1].cpu()


def phone_meta(ctx: Context, fmt: str, **extra: Any) -> dict:
    return dict(ctx.meta, batch_size=1, dynamic=False, layout="decoded", format=fmt, **extra)


def export_tflite(ctx: Context, o: Options, img: torch.Tensor) -> None:
    """``<stem>_float32.tflite`` and ``<stem>_float16.tflite`` (and ``<stem>_int8.tflite`` with --int8),
    NHWC float input; each run in LiteRT's interpreter and checked."""
    from models.backend_mobile import TFLiteBackend
    from models.export_mobile import write_tflite, write_tflite_fp16, write_tflite_int8

    t, files = time.time(), ctx.results["files"]
    f32, f16 = Path(f"{ctx.stem}_float32.tflite"), Path(f"{ctx.stem}_float16.tflite")
    with atomic_path(f32) as tmp:
        write_tflite(ctx.model, img, tmp, phone_meta(ctx, "tflite", precision="float32"))
        _compare_phone(f"LiteRT {f32.name}", TFLiteBackend(tmp, ctx.device, threads=o.threads), ctx, o, img)
    with atomic_path(f16) as tmp:
        write_tflite_fp16(f32, tmp, phone_meta(ctx, "tflite", precision="float16"))
        _compare_phone(f"LiteRT {f16.name}", TFLiteBackend(tmp, ctx.device, threads=o.threads), ctx, o, img,
                       fp16=True)
    files.update(tflite=str(f32), tflite_fp16=str(f16))
    if o.int8:
        f8 = Path(f"{ctx.stem}_int8.tflite")
        calib = calibration_images(o.data, o.calib_images, o.img_size, int(ctx.meta["stride"]))
        with atomic_path(f8) as tmp:
            write_tflite_int8(f32, tmp, phone_meta(ctx, "tflite", precision="int8"), calib,
                              keep_head=not o.quantize_head)
        ctx.results["tflite_int8"] = verify_int8(ctx, o, f8, f32)
        files["tflite_int8"] = str(f8)
    LOGGER.info(f"{colorstr('LiteRT:')} saved {', '.join(Path(files[k]).name for k in files if k.startswith('tflite'))}"
                f" ({f32.stat().st_size / 1e6:.1f} MB float32, {time.time() - t:.1f}s)")


def export_executorch(ctx: Context, o: Options, img: torch.Tensor) -> None:
    """``<stem>.pte``: ExecuTorch program with the XNNPACK delegate, run in ExecuTorch's runtime and checked."""
    from models.backend_mobile import ExecuTorchBackend
    from models.export_mobile import write_executorch

    t, f = time.time(), Path(f"{ctx.stem}.pte")
    with atomic_path(f) as tmp:
        write_executorch(ctx.model, img, tmp, phone_meta(ctx, "executorch"))
        _compare_phone(f"ExecuTorch {f.name}", ExecuTorchBackend(tmp, ctx.device), ctx, o, img)
    ctx.results["files"]["executorch"] = str(f)
    LOGGER.info(f"{colorstr('ExecuTorch:')} saved {f} ({f.stat().st_size / 1e6:.1f} MB, {time.time() - t:.1f}s)")


def export_coreml(ctx: Context, o: Options, img: torch.Tensor) -> None:
    """``<stem>.mlpackage``: Core ML ML Program. It cannot run off Apple platforms: what is checked here is
    the program's input, output shape and op set, and its metadata."""
    from models.export_mobile import write_coreml

    t, d = time.time(), Path(f"{ctx.stem}.mlpackage")
    expected = list(decoded(ctx.model, img.to(ctx.device)).shape)
    with tempfile.TemporaryDirectory(prefix="moy-coreml-") as side, atomic_dir(d) as tmp:
        pkg = Path(side) / d.name  # coremltools wants the .mlpackage name
        summary = write_coreml(ctx.model, img, pkg, phone_meta(ctx, "coreml"), int8=o.int8)
        tmp.rmdir()
        shutil.move(str(pkg), str(tmp))
        if summary["output_shape"] != expected or summary["inputs"] != ["image"]:
            raise ExportError(f"Core ML {d.name}: output {summary['output_shape']} / inputs {summary['inputs']}, "
                              f"expected output {expected} and input 'image'")
    ctx.results["coreml"] = dict(summary, executed=False, weights="int8" if o.int8 else "fp16")
    ctx.results["files"]["coreml"] = str(d)
    LOGGER.info(f"{colorstr('Core ML:')} saved {d} ({len(summary['ops'])} op types, output {expected}; not run: "
                f"Core ML predicts on macOS / iOS only, {time.time() - t:.1f}s)")


def _compare_phone(name: str, backend: Any, ctx: Context, o: Options, img: torch.Tensor,
                   fp16: bool = False) -> None:
    with torch.no_grad():
        out = backend(img)
    verify_fp32(name, ctx, o, [out.cpu()], img=img.to(ctx.img.device), fp16=fp16)


def export_phone_formats(ctx: Context, o: Options) -> None:
    chosen = [f for f in PHONE_FORMATS if f in o.include]
    if not chosen:
        return
    img = phone_input(ctx, o)
    for fmt in chosen:
        {"tflite": export_tflite, "executorch": export_executorch, "coreml": export_coreml}[fmt](ctx, o, img)


# --------------------------------------------------------------------------- driver
def run(weights: str | Path = "best.pt", img_size: Sequence[int] = (640, 640), batch_size: int = 1,
        device: str = "cpu", include: Sequence[str] = DEFAULT_INCLUDE, source: Optional[str] = None,
        **options: Any) -> dict[str, Any]:
    """Export ``weights`` to each format in ``include`` and verify each; returns a results dict.

    ``options`` are the fields of :class:`Options` (the CLI flags). Raises :class:`ExportError`
    when an artefact fails its check.
    """
    img_size = list(img_size) * 2 if len(img_size) == 1 else list(img_size)
    o = Options(include=[x.lower() for x in include], img_size=img_size, batch_size=batch_size, **options)
    check_options(o)
    announce_precision(o)
    ctx = prepare(Path(weights), o, device, source)
    files = ctx.results["files"]
    if "fused" in o.include:
        files["fused"] = str(export_fused_checkpoint(ctx, o))
    if "torchscript" in o.include:
        files["torchscript"] = str(export_torchscript(ctx, o))
    if "onnx" in o.include:
        files["onnx"] = str(export_onnx(ctx, o))
    if "openvino" in o.include or (o.int8 and {"onnx", "openvino"} & set(o.include)):
        with tempfile.TemporaryDirectory(prefix="moy-export-") as tmpd:
            src = plain_onnx(ctx, o, Path(tmpd))
            if "openvino" in o.include:
                files["openvino"] = str(export_openvino(ctx, o, src))
            if o.int8:
                export_int8(ctx, o, src)
    if "ncnn" in o.include:
        files["ncnn"] = str(export_ncnn(ctx, o))
    export_phone_formats(ctx, o)
    ctx.results["fixed_size"] = [] if o.dynamic else [k for k in files if k in FIXED_SIZE_FORMATS]
    ctx.results["img_size"] = list(o.img_size)
    return ctx.results


def fixed_size_note(fixed: Sequence[str], img_size: Sequence[int]) -> str:
    """What a fixed input size means for the user: the inputs these files are run and scored on."""
    h, w = img_size
    which = "this file" if len(fixed) == 1 else "these files"
    return (f"Fixed {h}x{w} input: {', '.join(fixed)}. test.py and detect.py letterbox every image to exactly "
            f"{h}x{w} for {which}, while the .pt runs rectangular batches, so their mAP can differ from the .pt's: "
            f"'test.py --no-rect --img-size {max(h, w)}' scores the .pt on the same square inputs, and "
            f"'export.py --dynamic' keeps rectangular inference.")


def announce_precision(o: Options) -> None:
    """Say what ``--fp16`` does for the chosen formats (it changes no ONNX or TorchScript file)."""
    if o.fp16:
        notes = [f for f in ("openvino", "ncnn") if f in o.include]
        LOGGER.info(f"{colorstr('fp16:')} weights stored in fp16 for {', '.join(notes) or 'no chosen format'}; "
                    f"ONNX and TorchScript stay fp32 (an fp16 graph runs slower than fp32 on CPUs)")


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="export.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=str, default="best.pt", help="training or fused checkpoint (.pt)")
    p.add_argument("--include", nargs="+", default=list(DEFAULT_INCLUDE), choices=INCLUDE_CHOICES,
                   help="formats to write")
    p.add_argument("--img-size", nargs="+", type=int, default=[640, 640], help="image size: h w (or one value)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the exported graph")
    p.add_argument("--device", default="cpu", help="cuda device, i.e. 0 or cpu")
    p.add_argument("--dynamic", action="store_true", help="ONNX/OpenVINO: dynamic batch and image size axes")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: dynamic batch axis only (YOLOv7)")
    p.add_argument("--simplify", action="store_true", help="ONNX: simplify the graph with onnxslim")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True,
                   help="decoded output (B, N, 5+nc); --no-grid exports the raw per-level head outputs")
    p.add_argument("--end2end", action="store_true", help="ONNX: NMS inside the graph")
    p.add_argument("--include-nms", action="store_true",
                   help="ONNX: boxes (xyxy) and obj*cls scores outputs for an external NMS plugin (YOLOv7)")
    p.add_argument("--max-wh", type=int, default=None,
                   help="end2end: None = (num_dets, boxes, scores, classes) outputs; N = YOLOv7's ONNX Runtime "
                        "(K, 7) output with a class offset of N pixels")
    p.add_argument("--topk-all", type=int, default=100, help="end2end: max detections per image (per class with "
                   "--max-wh)")
    p.add_argument("--iou-thres", type=float, default=0.45, help="end2end: NMS IoU threshold")
    p.add_argument("--conf-thres", type=float, default=0.25, help="end2end: score threshold")
    p.add_argument("--agnostic-nms", action="store_true", help="end2end: class-agnostic NMS")
    p.add_argument("--fp16", action="store_true", help="OpenVINO/NCNN: store weights in fp16")
    p.add_argument("--int8", action="store_true", help="ONNX/OpenVINO: also write INT8 post-training quantized files")
    p.add_argument("--data", type=str, default=None, help="dataset yaml: INT8 calibration (train) and check (val)")
    p.add_argument("--calib-images", type=int, default=300, help="INT8: calibration images from the train split")
    p.add_argument("--calib-method", default="minmax", choices=("minmax", "entropy", "percentile"),
                   help="INT8: activation ranges (minmax: mean of per-image min/max)")
    p.add_argument("--quantize-head", action="store_true",
                   help="INT8: quantize the head's last convs too (default: they and the decode stay in float)")
    p.add_argument("--int8-max-drop", type=float, default=1.0, help="INT8: largest mAP@.5 drop (points) accepted")
    p.add_argument("--threads", type=int, default=None, help="runtime threads for the checks (default: all usable)")
    p.add_argument("--source", type=str, default=None, help="image used for the checks (default: a val image "
                   "of --data, else random)")
    p.add_argument("--rtol", type=float, default=RTOL_FLOOR,
                   help="fp32 checks: relative error max|ref-out|/max|ref| against the float64 model always accepted")
    p.add_argument("--rtol-factor", type=float, default=RTOL_FACTOR,
                   help="fp32 checks: also accepted up to this many times the float32 model's own error")
    p.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    set_logging()
    opt = vars(parse_opt(argv))
    opt.pop("verbose")
    t = time.time()
    results = run(**opt)  # errors end in one line through run_cli (bad input exit 2, a failed check 1)
    files = results["files"]
    LOGGER.info(f"\nExport complete ({time.time() - t:.1f}s), all checks passed: "
                + ", ".join(f"{k} -> {v}" for k, v in files.items()))
    if results["fixed_size"]:
        LOGGER.info(fixed_size_note(results["fixed_size"], results["img_size"]))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="export.py"))
