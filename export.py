"""Export a trained detector as fused weights, TorchScript and ONNX, each checked against PyTorch.

Usage:
    python export.py --weights best.pt                          # torchscript + onnx + fused (default)
    python export.py --weights best.pt --include fused          # -> best-fused.pt
    python export.py --weights best.pt --include onnx --dynamic --simplify
    python export.py --weights best.pt --include onnx --end2end --topk-all 100 --conf-thres 0.25

Outputs are written beside the weights: ``best-fused.pt``, ``best.torchscript.pt``, ``best.onnx``.

Every artefact is made from the *fused* model (MobileOne, RepConv, Conv+BN and the IDetect
implicit layers re-parameterized). Nothing is trusted blindly:

* fusing: parameters and GFLOPs are printed before and after, and the decoded predictions of the
  unfused and fused model are compared on the same image (``--source`` image, else a seeded
  random image); the fused checkpoint is then re-loaded from disk and compared again;
* TorchScript: the saved file is re-loaded with ``torch.jit.load`` and run on the same input;
* ONNX: ``onnx.checker`` must pass, then ONNX Runtime (CPU) runs the file on the same input; with
  ``--dynamic`` it is also run at a second batch size and image size.

The error reported for each output tensor is ``max |a - b| / max |a|`` (a = PyTorch, b = the
artefact); beyond ``--rtol`` (default 1e-3) the export fails with a non-zero exit status. Why 1e-3:
the float32 rounding noise of the network itself is ~1e-4 by this measure (float32 vs float64 of
the same unfused model: 2e-5 to 1.2e-4 on random-weight yolov7-tiny-ms0 at 128-320 px), and
fusing or ONNX Runtime's kernels reorder the arithmetic, so 1e-4 would fail on rounding alone,
while real faults (a wrong BatchNorm eps, a missed branch) give errors of 1e-2 and more.

Output layout:
* default (``--grid``, on): one tensor ``output`` (B, N, 5 + nc) = pixel (cx, cy, w, h),
  objectness, class scores, i.e. the decoded predictions that ``non_max_suppression`` and
  ``detect.py`` take. ``--no-grid`` exports the raw per-level head outputs ``output0..`` of shape
  (B, na, ny, nx, 5 + nc) (YOLOv7's export without ``--grid``) for custom decoders.
* ``--end2end`` (ONNX only): NMS inside the graph with the standard ONNX ``NonMaxSuppression``
  op (runs in ONNX Runtime without plugins). Outputs ``num_dets`` (B, 1) int32, ``det_boxes``
  (B, topk, 4) float32 pixel xyxy, ``det_scores`` (B, topk), ``det_classes`` (B, topk) int32;
  rows past ``num_dets`` are padded with 0 (boxes, scores) and -1 (classes). Score = objectness
  x class score (objectness alone for one-class models), one best class per box, class-aware NMS:
  the same boxes as ``non_max_suppression(pred, conf_thres, iou_thres, max_det=topk_all)``.
  The top-k size is fixed at export (``min(topk_all, N)``); a ``--dynamic`` end2end graph therefore
  needs inputs with at least that many candidates (N = 63 * h * w / 1024 for three levels of 3
  anchors: 100 needs about 40x40 pixels).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torchvision

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.experimental import attempt_load, fused_checkpoint  # noqa: E402
from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from utils.general import LOGGER, check_img_size, colorstr, set_logging, xywh2xyxy  # noqa: E402
from utils.torch_utils import model_info, select_device  # noqa: E402

INCLUDE_CHOICES = ("torchscript", "onnx", "fused")
MAX_WH = 4096  # class offset of class-aware NMS in the end2end graph (pixels), as YOLOv7


class ExportError(RuntimeError):
    """An export could not be made or does not reproduce the PyTorch model."""


# --------------------------------------------------------------------------- comparison helpers
def rel_error(ref: torch.Tensor | np.ndarray, out: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """(max |ref - out|, max |ref - out| / max |ref|) of one output tensor, in float64."""
    ref = torch.as_tensor(ref).detach().cpu().double()
    out = torch.as_tensor(out).detach().cpu().double()
    if ref.shape != out.shape:
        raise ExportError(f"output shape {tuple(out.shape)} differs from PyTorch's {tuple(ref.shape)}")
    if ref.numel() == 0:
        return 0.0, 0.0
    diff = float((ref - out).abs().max())
    return diff, diff / max(float(ref.abs().max()), 1e-12)


def _as_list(y: Any) -> list[torch.Tensor]:
    return list(y) if isinstance(y, (list, tuple)) else [y]


# --------------------------------------------------------------------------- model wrappers
def detect_head(model: nn.Module) -> nn.Module:
    """The Detect / IDetect module (last layer of ``Model.model``)."""
    return model.model[-1]


@torch.no_grad()
def decoded(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    """Decoded predictions (B, N, 5 + nc) of an eval-mode model (either output convention)."""
    y = model(img)
    return y[0] if isinstance(y, (list, tuple)) else y


class RawHead(nn.Module):
    """Returns the raw per-level head outputs (B, na, ny, nx, no) of an eval-mode model.

    YOLOv7 exports these when ``--grid`` is off: the Detect layer runs its training branch (no
    sigmoid, no grid), every other layer stays in eval mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        head = detect_head(self.model)
        was = head.training
        head.training = True
        try:
            return tuple(self.model(x))
        finally:
            head.training = was


class DecodedHead(nn.Module):
    """Returns only the decoded predictions (B, N, 5 + nc), whatever the Detect convention."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y[0] if isinstance(y, (list, tuple)) else y


class ORTNonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (opset >= 11) with a real PyTorch forward (torchvision NMS).

    Inputs follow the ONNX op: ``boxes`` (B, N, 4) xyxy, ``scores`` (B, C, N), 1-element tensors
    ``max_output_boxes_per_class`` (int64), ``iou_threshold`` and ``score_threshold`` (float32).
    Returns selected indices (K, 3) int64 rows ``[batch, class, box]``. Scores must be strictly
    greater than the threshold to be kept, as in ONNX Runtime.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
        max_out = int(max_output_boxes_per_class.reshape(-1)[0])
        iou, thr = float(iou_threshold.reshape(-1)[0]), float(score_threshold.reshape(-1)[0])
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                s = scores[b, c]
                cand = torch.nonzero(s > thr).flatten()
                keep = cand[torchvision.ops.nms(boxes[b, cand].float(), s[cand].float(), iou)[:max_out]]
                rows.append(torch.stack((torch.full_like(keep, b), torch.full_like(keep, c), keep), 1))
        if not rows:
            return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
        return torch.cat(rows, 0)

    @staticmethod
    def symbolic(g, boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
        return g.op("NonMaxSuppression", boxes, scores, max_output_boxes_per_class, iou_threshold,
                    score_threshold, center_point_box_i=0)


class End2End(nn.Module):
    """Model + NMS in one graph: returns (num_dets, det_boxes, det_scores, det_classes).

    Same selection as ``utils.general.non_max_suppression(pred, conf_thres, iou_thres,
    max_det=topk_all)``: score = obj * cls (obj for nc == 1), best class per box, class-aware NMS
    through a per-class coordinate offset of ``MAX_WH`` pixels (``agnostic`` drops it).
    """

    def __init__(self, model: nn.Module, topk_all: int = 100, iou_thres: float = 0.45,
                 conf_thres: float = 0.25, agnostic: bool = False):
        super().__init__()
        self.model = DecodedHead(model)
        self.topk_all = int(topk_all)
        self.agnostic = agnostic
        self.register_buffer("max_out", torch.tensor([int(topk_all)], dtype=torch.int64), persistent=False)
        self.register_buffer("iou_thres", torch.tensor([float(iou_thres)]), persistent=False)
        self.register_buffer("conf_thres", torch.tensor([float(conf_thres)]), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.model(x).float()  # (B, N, 5 + nc)
        boxes = xywh2xyxy(p[..., :4])
        obj = p[..., 4:5]
        scores = obj if p.shape[2] == 6 else p[..., 5:] * obj
        score, cls = scores.max(2, keepdim=True)  # (B, N, 1)
        nms_boxes = boxes if self.agnostic else boxes + cls.to(boxes.dtype) * MAX_WH
        sel = ORTNonMaxSuppression.apply(nms_boxes, score.transpose(1, 2), self.max_out,
                                         self.iou_thres, self.conf_thres)
        keep = torch.zeros_like(score[..., 0])  # (B, N): 1 where NMS kept the box
        keep[sel[:, 0], sel[:, 2]] = 1.0
        k = min(self.topk_all, int(p.shape[1]))  # a constant in exported graphs
        masked = score[..., 0] * keep + (keep - 1.0)  # kept scores, -1 elsewhere
        vals, idx = masked.topk(k, dim=1)
        valid = keep.gather(1, idx)  # (B, k)
        num_dets = valid.sum(1, keepdim=True).to(torch.int32)
        det_boxes = boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1)
        det_scores = vals * valid
        det_classes = (cls[..., 0].gather(1, idx).to(torch.int32) + 1) * valid.to(torch.int32) - 1
        return num_dets, det_boxes, det_scores, det_classes


# --------------------------------------------------------------------------- inputs
def make_input(img_size: Sequence[int], batch_size: int, stride: int, device: torch.device,
               source: Optional[str] = None) -> torch.Tensor:
    """A (B, 3, H, W) float image in [0, 1]: the letterboxed ``source`` image, else seeded noise."""
    h, w = img_size
    if source:
        import cv2

        from utils.datasets import letterbox
        im0 = cv2.imread(str(source))
        if im0 is None:
            raise ExportError(f"--source {source}: not a readable image")
        im = letterbox(im0, (h, w), stride=stride, auto=False)[0]
        im = np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        img = torch.from_numpy(im).float().div(255.0)[None].repeat(batch_size, 1, 1, 1)
    else:
        g = torch.Generator().manual_seed(0)
        img = torch.rand((batch_size, 3, h, w), generator=g)
    return img.to(device)


# --------------------------------------------------------------------------- exporters
def _check(name: str, refs: list[torch.Tensor], outs: list, rtol: float, results: dict) -> None:
    if len(refs) != len(outs):
        raise ExportError(f"{name}: {len(outs)} outputs, PyTorch has {len(refs)}")
    worst_abs, worst_rel = 0.0, 0.0
    for r, o in zip(refs, outs):
        a, rel = rel_error(r, o)
        worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, rel)
    results[name] = {"max_abs_diff": worst_abs, "rel_error": worst_rel}
    ok = worst_rel <= rtol
    LOGGER.info(f"{colorstr('verify:')} {name}: max abs diff {worst_abs:.3g}, relative {worst_rel:.3g} "
                f"(tolerance {rtol:g}) {'OK' if ok else 'FAILED'}")
    if not ok:
        raise ExportError(f"{name}: relative error {worst_rel:.3g} exceeds the tolerance {rtol:g}")


def _end2end_check(name: str, refs: list[torch.Tensor], outs: list, rtol: float, results: dict) -> None:
    """Same detections per image: equal num_dets, scores to ``rtol``, and every box matched to a
    PyTorch box of the same class within ``rtol * max|box|`` (detections whose scores differ only
    by rounding may come in either order)."""
    n_ref, n_out = refs[0].cpu().numpy().reshape(-1), np.asarray(outs[0]).reshape(-1)
    if not np.array_equal(n_ref, n_out):
        raise ExportError(f"{name}: num_dets {n_out.tolist()} differ from PyTorch's {n_ref.tolist()} "
                          f"(a box at the score or IoU threshold within rounding, or a faulty graph)")
    worst_abs, worst_rel = 0.0, 0.0
    for i, n in enumerate(n_ref.tolist()):
        rb, rs, rc = (refs[k][i, :n].detach().cpu().double().numpy() for k in (1, 2, 3))
        ob, os_, oc = (np.asarray(outs[k][i, :n], dtype=np.float64) for k in (1, 2, 3))
        if n == 0:
            continue
        s_abs = float(np.abs(rs - os_).max())  # both sorted by decreasing score
        box_scale = max(float(np.abs(rb).max()), 1e-12)
        free = np.ones(n, dtype=bool)
        b_abs = 0.0
        for j in range(n):
            cand = np.flatnonzero(free & (rc == oc[j]))
            if not len(cand):
                raise ExportError(f"{name}: image {i}: detection {j} (class {int(oc[j])}) has no PyTorch match")
            d = np.abs(rb[cand] - ob[j]).max(1)
            k = int(d.argmin())
            free[cand[k]] = False
            b_abs = max(b_abs, float(d[k]))
        worst_abs = max(worst_abs, s_abs, b_abs)
        worst_rel = max(worst_rel, s_abs / max(float(np.abs(rs).max()), 1e-12), b_abs / box_scale)
    results[name] = {"max_abs_diff": worst_abs, "rel_error": worst_rel, "num_dets": n_ref.tolist()}
    ok = worst_rel <= rtol
    LOGGER.info(f"{colorstr('verify:')} {name}: num_dets {n_ref.tolist()} equal, max abs diff {worst_abs:.3g}, "
                f"relative {worst_rel:.3g} (tolerance {rtol:g}) {'OK' if ok else 'FAILED'}")
    if not ok:
        raise ExportError(f"{name}: relative error {worst_rel:.3g} exceeds the tolerance {rtol:g}")


def export_fused_checkpoint(model: nn.Module, f: Path, ref: torch.Tensor, img: torch.Tensor,
                            device: torch.device, rtol: float, results: dict) -> Path:
    """Save ``fused_checkpoint(model)`` to ``f``, re-load it with ``attempt_load`` and compare."""
    t = time.time()
    save_checkpoint(fused_checkpoint(model), f)
    reloaded = attempt_load(f, map_location=device)
    _check(f"fused checkpoint {f.name} (re-loaded)", [ref], [decoded(reloaded, img)], rtol, results)
    LOGGER.info(f"{colorstr('fused:')} saved {f} ({f.stat().st_size / 1e6:.1f} MB, {time.time() - t:.1f}s)")
    return f


def export_torchscript(net: nn.Module, img: torch.Tensor, f: Path, meta: dict, refs: list[torch.Tensor],
                       rtol: float, results: dict) -> Path:
    """Trace ``net`` on ``img``, save with the metadata as ``config.txt``, re-load and compare."""
    t = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(net, img, strict=False, check_trace=False)
    ts.save(str(f), _extra_files={"config.txt": json.dumps(meta)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        loaded = torch.jit.load(str(f), map_location=img.device)
    with torch.no_grad():
        outs = [o.cpu() for o in _as_list(loaded(img))]
    _check(f"TorchScript {f.name}", refs, outs, rtol, results)
    LOGGER.info(f"{colorstr('TorchScript:')} saved {f} ({f.stat().st_size / 1e6:.1f} MB, {time.time() - t:.1f}s)")
    return f


def _ort_run(f: Path, img: torch.Tensor) -> list[np.ndarray]:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: img.detach().cpu().numpy()})


def export_onnx(net: nn.Module, img: torch.Tensor, f: Path, meta: dict, output_names: list[str], opset: int,
                dynamic: bool, simplify: bool, end2end: bool, rtol: float, results: dict,
                stride: int) -> Path:
    """Export ``net`` with the TorchScript-based exporter, check the graph, run it in ONNX Runtime."""
    import onnx

    t = time.time()
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        for name in output_names:
            if name == "output":
                dynamic_axes[name] = {0: "batch", 1: "anchors"}
            elif end2end:
                dynamic_axes[name] = {0: "batch"}
            else:  # raw level outputs (B, na, ny, nx, no)
                dynamic_axes[name] = {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, img, str(f), dynamo=False, opset_version=opset, do_constant_folding=True,
                          input_names=["images"], output_names=output_names, dynamic_axes=dynamic_axes)
    model_onnx = onnx.load(str(f))
    onnx.checker.check_model(model_onnx)
    if simplify:
        import onnxslim
        n0 = len(model_onnx.graph.node)
        model_onnx = onnxslim.slim(model_onnx)
        onnx.checker.check_model(model_onnx)
        LOGGER.info(f"{colorstr('ONNX:')} simplified with onnxslim {onnxslim.__version__}: "
                    f"{n0} -> {len(model_onnx.graph.node)} nodes")
    del model_onnx.metadata_props[:]
    for k, v in meta.items():
        entry = model_onnx.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)
    onnx.checker.check_model(model_onnx)
    onnx.save(model_onnx, str(f))
    results["onnx_checker"] = "passed"

    check = _end2end_check if end2end else _check
    with torch.no_grad():
        refs = [o.cpu() for o in _as_list(net(img))]
    check(f"ONNX Runtime {f.name}", refs, _ort_run(f, img), rtol, results)
    if dynamic:  # a second batch size and image size through the same graph
        b, _, h, w = img.shape
        img2 = torch.rand((b + 1, 3, h + stride, max(stride, w - stride)),
                          generator=torch.Generator().manual_seed(1)).to(img.device)
        with torch.no_grad():
            refs2 = [o.cpu() for o in _as_list(net(img2))]
        check(f"ONNX Runtime {f.name} dynamic {tuple(img2.shape)}", refs2, _ort_run(f, img2), rtol, results)
    LOGGER.info(f"{colorstr('ONNX:')} saved {f} (opset {opset}, {f.stat().st_size / 1e6:.1f} MB, "
                f"{time.time() - t:.1f}s)")
    return f


# --------------------------------------------------------------------------- driver
def run(weights: str | Path = "best.pt", img_size: Sequence[int] = (640, 640), batch_size: int = 1,
        device: str = "cpu", include: Sequence[str] = INCLUDE_CHOICES, dynamic: bool = False,
        simplify: bool = False, opset: int = 17, grid: bool = True, end2end: bool = False,
        topk_all: int = 100, iou_thres: float = 0.45, conf_thres: float = 0.25, agnostic_nms: bool = False,
        source: Optional[str] = None, rtol: float = 1e-3) -> dict[str, Any]:
    """Export ``weights`` to each format in ``include`` and verify each; returns a results dict.

    Raises :class:`ExportError` when an artefact fails its check.
    """
    weights = Path(weights)
    include = [x.lower() for x in include]
    bad = [x for x in include if x not in INCLUDE_CHOICES]
    if bad:
        raise ExportError(f"--include {bad}: unknown format(s); choose from {list(INCLUDE_CHOICES)}")
    if end2end and not grid:
        raise ExportError("--end2end needs the decoded output: drop --no-grid")
    if end2end and "onnx" not in include:
        raise ExportError("--end2end applies to the ONNX export: add onnx to --include")
    img_size = list(img_size) * 2 if len(img_size) == 1 else list(img_size)
    if len(img_size) != 2:
        raise ExportError(f"--img-size takes one or two values (h w), got {img_size}")
    dev = select_device(device)

    ckpt_fused = bool(load_checkpoint(weights).get("fused", False))
    model0 = attempt_load(weights, map_location=dev, fuse=False).eval()
    stride = int(model0.stride.max())
    img_size = [check_img_size(int(x), stride) for x in img_size]
    names = list(getattr(model0, "names", []) or [])
    img = make_input(img_size, batch_size, stride, dev, source)
    LOGGER.info(f"{colorstr('export:')} {weights} ({'fused' if ckpt_fused else 'training'} checkpoint), "
                f"input {tuple(img.shape)} ({'image ' + str(source) if source else 'seeded random image'})")

    results: dict[str, Any] = {"files": {}}
    info0 = model_info(model0, img_size=img_size)
    ref_unfused = decoded(model0, img).cpu()
    if ckpt_fused:
        model = model0
    else:
        model = copy.deepcopy(model0).fuse().eval()
    info1 = model_info(model, img_size=img_size)
    ref = decoded(model, img).cpu()
    results["params"] = (info0["parameters"], info1["parameters"])
    results["gflops"] = (info0["gflops"], info1["gflops"])
    g0 = f"{info0['gflops']:.2f}" if info0["gflops"] is not None else "?"
    g1 = f"{info1['gflops']:.2f}" if info1["gflops"] is not None else "?"
    LOGGER.info(f"{colorstr('fuse:')} parameters {info0['parameters']:,} -> {info1['parameters']:,}, "
                f"GFLOPs {g0} -> {g1} at {img_size[0]}x{img_size[1]}")
    _check("fused vs unfused (PyTorch)", [ref_unfused], [ref], rtol, results)

    stem = weights.with_suffix("")
    if "fused" in include:
        if ckpt_fused:
            LOGGER.info(f"{colorstr('fused:')} {weights} is already a fused checkpoint; not re-written")
            results["files"]["fused"] = str(weights)
        else:
            f = export_fused_checkpoint(model, Path(f"{stem}-fused.pt"), ref, img, dev, rtol, results)
            results["files"]["fused"] = str(f)

    head = detect_head(model)
    meta = {"names": names, "stride": stride, "nc": int(head.nc), "img_size": img_size,
            "batch_size": batch_size, "dynamic": dynamic, "grid": grid, "end2end": False,
            "source_weights": weights.name}
    net = DecodedHead(model) if grid else RawHead(model)
    net.eval()
    out_names = ["output"] if grid else [f"output{i}" for i in range(int(head.nl))]

    if "torchscript" in include:
        with torch.no_grad():
            refs = [o.cpu() for o in _as_list(net(img))]
        f = export_torchscript(net, img, Path(f"{stem}.torchscript.pt"), meta, refs, rtol, results)
        results["files"]["torchscript"] = str(f)

    if "onnx" in include:
        if end2end:
            net = End2End(model, topk_all, iou_thres, conf_thres, agnostic_nms).eval()
            out_names = ["num_dets", "det_boxes", "det_scores", "det_classes"]
            meta.update(end2end=True, topk_all=topk_all, iou_thres=iou_thres, conf_thres=conf_thres,
                        agnostic_nms=agnostic_nms)
            if opset < 11:
                raise ExportError(f"--end2end needs --opset >= 11 (NonMaxSuppression), got {opset}")
        f = export_onnx(net, img, Path(f"{stem}.onnx"), meta, out_names, opset, dynamic, simplify, end2end,
                        rtol, results, stride)
        results["files"]["onnx"] = str(f)
    return results


def parse_opt(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=str, default="best.pt", help="training or fused checkpoint (.pt)")
    p.add_argument("--include", nargs="+", default=list(INCLUDE_CHOICES), choices=INCLUDE_CHOICES,
                   help="formats to write")
    p.add_argument("--img-size", nargs="+", type=int, default=[640, 640], help="image size: h w (or one value)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the exported graph")
    p.add_argument("--device", default="cpu", help="cuda device, i.e. 0 or cpu")
    p.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch and image size axes")
    p.add_argument("--simplify", action="store_true", help="ONNX: simplify the graph with onnxslim")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True,
                   help="decoded output (B, N, 5+nc); --no-grid exports the raw per-level head outputs")
    p.add_argument("--end2end", action="store_true", help="ONNX: NMS inside the graph")
    p.add_argument("--topk-all", type=int, default=100, help="end2end: max detections per image")
    p.add_argument("--iou-thres", type=float, default=0.45, help="end2end: NMS IoU threshold")
    p.add_argument("--conf-thres", type=float, default=0.25, help="end2end: score threshold")
    p.add_argument("--agnostic-nms", action="store_true", help="end2end: class-agnostic NMS")
    p.add_argument("--source", type=str, default=None, help="image used for the checks (default: random)")
    p.add_argument("--rtol", type=float, default=1e-3, help="verification tolerance: max|a-b|/max|a|")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    set_logging()
    opt = parse_opt(argv)
    t = time.time()
    try:
        results = run(**{k: v for k, v in vars(opt).items()})
    except (ExportError, CheckpointError, FileNotFoundError) as e:
        LOGGER.error(f"{colorstr('red', 'bold', 'export failed:')} {e}")
        return 1
    files = results["files"]
    LOGGER.info(f"\nExport complete ({time.time() - t:.1f}s), all checks passed: "
                + ", ".join(f"{k} -> {v}" for k, v in files.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
