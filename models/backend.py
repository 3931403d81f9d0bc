"""One runtime for every model file the project writes: load by suffix or folder, run, get predictions.

    from models.backend import load_backend
    from utils.data.preprocess import preprocess, to_tensor
    model = load_backend("best.pt")                  # or best.torchscript.pt, best.onnx, [a.pt, b.pt]
    chw, info = preprocess(bgr, 640, model.stride, auto=model.imgsz is None)
    x = to_tensor(chw, model.device, model.fp16)     # (1, 3, H, W) float in 0..1
    pred = model(x)                                  # (N, anchors, 5 + nc) decoded, input pixels xywh
    dets = model.predict(x, conf_thres=0.25)         # per image (n, 6) xyxy, conf, cls (NMS or end2end)

Formats (first matching entry of :data:`BACKENDS` wins; add a format with :func:`register`):
- ``*.torchscript.pt`` / ``*.torchscript``: ``torch.jit.load`` with export.py's ``config.txt``;
- ``*.onnx``: ONNX Runtime; decoded output, raw per-level outputs (decoded here from the file's
  ``anchors`` metadata) or end2end (NMS in the graph); fp32 or int8 QDQ alike;
- ``*.pt`` / ``*.pth``: a training or fused checkpoint of this project (``attempt_load``, read with
  ``weights_only=True``);
- ``*.tflite``, ``*.pte``, ``*.mlpackage``: the phone formats (:mod:`models.backend_mobile`).
Several files make an :class:`Ensemble`: the predictions of all models concatenated, then one NMS.

Threads: :func:`set_threads` sets PyTorch's intra-op threads; ONNX Runtime sessions get the same
count, sequential execution and no spinning, so a busy machine slows inference gracefully.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from models.backend_base import (
    Backend,
    PathLike,
    Weights,
    apply_meta,
    decode_raw,
    default_threads,
    export_folder,
    read_folder_meta,
    read_meta,
    set_threads,
)
from models.backend_mobile import CoreMLBackend, ExecuTorchBackend, TFLiteBackend, is_mlpackage, is_pte, is_tflite
from models.experimental import attempt_load
from utils.cli import UserError
from utils.log import LOGGER
from utils.names import names_list
from utils.torch_utils import select_device


class PyTorchBackend(Backend):
    """A project checkpoint (training or fused) built by ``attempt_load``; fused unless ``fuse=False``."""

    format = "pytorch"
    supports_augment = True

    def __init__(self, path: PathLike, device: torch.device, fuse: bool = True, half: bool = False,
                 model: Optional[torch.nn.Module] = None, **_: Any):
        super().__init__(path, device)
        if model is None:

            model = attempt_load(path, map_location=device, fuse=fuse)
        elif fuse:
            model.fuse()
        self.model = model.to(device).eval()
        self.fp16 = bool(half and device.type == "cuda")
        if self.fp16:
            self.model.half()
        self.stride = int(self.model.stride.max())
        self.names = names_list(getattr(self.model, "names", None), self.model.nc)

    @classmethod
    def from_model(cls, model: torch.nn.Module, device: Union[str, torch.device] = "cpu", fuse: bool = True,
                   half: bool = False) -> "PyTorchBackend":
        """A backend around an in-memory ``Model`` (e.g. freshly built); ``fuse`` re-parameterizes it in place."""
        return cls(Path(f"<{type(model).__name__}>"), _device(device), fuse=fuse, half=half, model=model)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        x = x.to(self.device, torch.half if self.fp16 else torch.float)
        y = self.model(x, augment=augment)
        return y[0] if isinstance(y, (list, tuple)) else y


class TorchScriptBackend(Backend):
    """A ``torch.jit`` file written by export.py (decoded output, traced at a fixed size)."""

    format = "torchscript"

    def __init__(self, path: PathLike, device: torch.device, half: bool = False, **_: Any):
        super().__init__(path, device)
        extra = {"config.txt": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.model = torch.jit.load(str(path), _extra_files=extra, map_location=device).eval()
            except RuntimeError as e:
                raise UserError(f"{path}: not a readable TorchScript file ({str(e).splitlines()[0]})") from e
        meta = read_meta({"_": extra["config.txt"]}).get("_") or {}
        if not isinstance(meta, dict) or not meta:
            raise UserError(f"{path}: TorchScript file without export.py's config.txt (names, stride); "
                            f"export it with export.py")
        if not meta.get("grid", True):
            raise UserError(f"{path}: raw-output TorchScript (--no-grid) is not runnable here; "
                            f"re-export without --no-grid")
        apply_meta(self, meta, None)
        if not meta.get("dynamic") and meta.get("img_size"):
            self.imgsz = tuple(int(v) for v in meta["img_size"])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        y = self.model(x.to(self.device, torch.float))
        return y[0] if isinstance(y, (list, tuple)) else y


class OnnxBackend(Backend):
    """An ONNX file run by ONNX Runtime (CUDA provider when the device is CUDA and it is available)."""

    format = "onnx"

    def __init__(self, path: PathLike, device: torch.device, threads: Optional[int] = None, **_: Any):
        import onnxruntime as ort

        super().__init__(path, device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=ort_session_options(threads),
                                                providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for damaged files
            raise UserError(f"{path}: not a loadable ONNX file ({str(e).splitlines()[0][:200]})") from e
        meta = read_meta(dict(self.session.get_modelmeta().custom_metadata_map))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        shape = list(inp.shape)
        self.batch = shape[0] if isinstance(shape[0], int) else None
        self.imgsz = tuple(shape[2:4]) if all(isinstance(s, int) for s in shape[2:4]) else None
        outs = self.session.get_outputs()
        self.output_names = [o.name for o in outs]
        self.layout = meta.get("layout", "")
        if self.layout == "include_nms":
            raise UserError(f"{path}: an --include-nms graph (boxes and scores for a TensorRT NMS plugin) "
                            f"cannot be run here; export with --end2end or without NMS")
        self.end2end = "num_dets" in self.output_names or self.layout == "end2end_ort"
        self.raw = not self.end2end and len(outs) > 1
        nc_out = None
        if not self.end2end and isinstance(outs[0].shape[-1], int):
            nc_out = int(outs[0].shape[-1]) - 5
        apply_meta(self, meta, nc_out)
        if self.raw:
            self._anchors = meta.get("anchors")
            self._strides = meta.get("strides")
            if not self._anchors or not self._strides or len(self._anchors) != len(outs):
                raise UserError(f"{path}: {len(outs)} raw per-level outputs ({', '.join(self.output_names)}) "
                                f"without 'anchors'/'strides' metadata to decode them; re-export without --no-grid")

    def __call__(self, x: torch.Tensor, augment: bool = False) -> Any:
        self.check_batch(int(x.shape[0]))
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(self.input_dtype, copy=False)})
        out = [torch.from_numpy(o).to(self.device) for o in out]
        if self.layout == "end2end_ort":
            return ort_rows_to_end2end(out[0], int(x.shape[0]))
        if self.end2end:
            return out
        if self.raw:
            return decode_raw(out, torch.tensor(self._anchors, dtype=torch.float32), self._strides)
        return out[0].float()


def ort_rows_to_end2end(rows: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """YOLOv7's ONNX Runtime end2end output, (K, 7) rows ``[image, x0, y0, x1, y1, class, score]``, as the
    (num_dets, boxes, scores, classes) tensors of an ``--end2end`` graph (padded, best score first)."""
    img = rows[:, 0].long()
    counts = torch.bincount(img, minlength=batch)[:batch]
    k = max(int(counts.max()) if len(rows) else 0, 1)
    boxes = rows.new_zeros(batch, k, 4)
    scores = rows.new_zeros(batch, k)
    classes = torch.full((batch, k), -1, dtype=torch.int32, device=rows.device)
    for i in range(batch):
        r = rows[img == i]
        r = r[r[:, 6].argsort(descending=True)]
        boxes[i, :len(r)], scores[i, :len(r)], classes[i, :len(r)] = r[:, 1:5], r[:, 6], r[:, 5].int()
    return [counts.view(-1, 1).int(), boxes, scores, classes]


def ort_session_options(threads: Optional[int] = None):
    """ONNX Runtime options: ``threads`` intra-op threads (default: the usable cores), sequential
    execution, and worker threads that sleep instead of spinning when idle."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or default_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class Ensemble(Backend):
    """Several models as one (YOLOv7's ensemble): their predictions concatenated, then one NMS."""

    format = "ensemble"

    def __init__(self, members: Sequence[Backend]):
        if len(members) < 2:
            raise UserError("an ensemble needs at least two --weights")
        super().__init__(members[0].path, members[0].device)
        self.members = list(members)
        for m in self.members:
            if m.end2end:
                raise UserError(f"{m.path}: an end2end graph (NMS inside) cannot join an ensemble; "
                                f"export without --end2end")
            if m.nc != members[0].nc:
                raise UserError(f"{m.path}: {m.nc} classes, but {members[0].path} has {members[0].nc}; "
                                f"ensemble members must share their classes")
        fixed = {m.imgsz for m in self.members if m.imgsz is not None}
        if len(fixed) > 1:
            raise UserError(f"ensemble members have different fixed input sizes {sorted(fixed)}")
        batches = {m.batch for m in self.members if m.batch is not None}
        if len(batches) > 1:
            raise UserError(f"ensemble members have different fixed batch sizes {sorted(batches)}")
        self.names = members[0].names
        self.stride = max(m.stride for m in self.members)
        self.imgsz = fixed.pop() if fixed else None
        self.batch = batches.pop() if batches else None
        self.fp16 = all(m.fp16 for m in self.members)
        self.supports_augment = all(m.supports_augment for m in self.members)

    def __call__(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        outs = [(m(x, augment=augment) if m.supports_augment else m(x)).float() for m in self.members]
        return torch.cat(outs, 1)

    def __repr__(self) -> str:
        return f"Ensemble({', '.join(str(m.path) for m in self.members)})"


# --------------------------------------------------------------------------- registry
Matcher = Callable[[Path], bool]

#: (matcher, class) pairs tried in order; the first matcher that accepts the path picks the class.
BACKENDS: list[tuple[Matcher, type]] = [
    (lambda p: p.name.lower().endswith((".torchscript.pt", ".torchscript")), TorchScriptBackend),
    (lambda p: p.suffix.lower() == ".onnx", OnnxBackend),
    (lambda p: p.suffix.lower() in (".pt", ".pth"), PyTorchBackend),
]


def register(matcher: Matcher, cls: type, first: bool = True) -> None:
    """Add a format: ``cls(path, device, threads=..., fuse=..., half=...)`` for paths ``matcher`` accepts."""
    if first:
        BACKENDS.insert(0, (matcher, cls))
    else:
        BACKENDS.append((matcher, cls))


def _device(device: Union[str, torch.device]) -> torch.device:
    if isinstance(device, torch.device):
        return device

    return select_device(str(device))


def _load_one(path: Path, device: torch.device, threads: Optional[int], fuse: bool, half: bool) -> Backend:
    for matcher, cls in BACKENDS:
        if matcher(path):
            if not path.exists():
                raise FileNotFoundError(2, "weights not found", str(path))
            return cls(path, device, threads=threads, fuse=fuse, half=half)
    raise UserError(f"{path}: unsupported weights format; expected .pt/.pth, .torchscript.pt, .onnx"
                    f"{''.join(', ' + n for n in extra_format_names())}")


def extra_format_names() -> list[str]:
    """Names of registered formats beyond the built-in ones (for messages)."""
    builtin = {TorchScriptBackend, OnnxBackend, PyTorchBackend}
    return [getattr(cls, "format", cls.__name__) for _, cls in BACKENDS if cls not in builtin]


def load_backend(weights: Weights, device: Union[str, torch.device] = "cpu", threads: Optional[int] = None,
                 fuse: bool = True, verbose: bool = False, half: bool = False) -> Backend:
    """Load ``weights`` (one path, or several for an :class:`Ensemble`) as a :class:`Backend`.

    ``threads``: intra-op threads for PyTorch and ONNX Runtime (default: the usable cores);
    ``half``: fp16 PyTorch inference on CUDA.
    """
    paths = [Path(weights)] if isinstance(weights, (str, Path)) else [Path(w) for w in weights]
    if not paths:
        raise UserError("--weights: no model file given")
    n = set_threads(threads)
    dev = _device(device)
    members = [_load_one(p, dev, n, fuse, half) for p in paths]
    model = members[0] if len(members) == 1 else Ensemble(members)
    msg = (f"{model.format}: {', '.join(str(p) for p in paths)} ({model.nc} classes, stride {model.stride}, "
           f"{n} threads, {dev})")
    (LOGGER.info if verbose else LOGGER.debug)(msg)
    return model


class OpenVINOBackend(Backend):
    """An OpenVINO IR folder written by export.py (fp32, fp16 or INT8), run on the CPU plugin.

    ``threads`` sets ``INFERENCE_NUM_THREADS``; inference precision is pinned to f32 so that an
    fp32 file computes in fp32 (the CPU plugin would pick bf16 on CPUs with AMX/AVX512-BF16).
    """

    format = "openvino"

    def __init__(self, path: PathLike, device: torch.device, threads: Optional[int] = None, **_: Any):
        import openvino as ov

        super().__init__(path, device)
        folder = export_folder(self.path, ".xml")
        xml = self.path if self.path.suffix == ".xml" else sorted(folder.glob("*.xml"))[0]
        meta = read_folder_meta(folder)
        core = ov.Core()
        try:
            model = core.read_model(str(xml))
        except RuntimeError as e:
            raise UserError(f"{xml}: not a readable OpenVINO IR ({str(e).splitlines()[0][:200]})") from e
        config = {"INFERENCE_NUM_THREADS": int(threads or default_threads()), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        shape = model.input(0).get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape]
        self.batch = dims[0]
        self.imgsz = tuple(dims[2:4]) if None not in dims[2:4] else None
        apply_meta(self, meta, None)

    def __call__(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        self.check_batch(int(x.shape[0]))
        out = self.request.infer({0: x.detach().cpu().float().numpy()})[self.compiled.output(0)]
        return torch.from_numpy(np.array(out, dtype=np.float32)).to(self.device)


class NCNNBackend(Backend):
    """An ncnn folder written by export.py: the head maps per level, decoded here with the
    anchors and strides of its metadata. ncnn runs one image at a time; ``threads`` sets
    ``opt.num_threads``."""

    format = "ncnn"

    def __init__(self, path: PathLike, device: torch.device, threads: Optional[int] = None, **_: Any):
        import ncnn

        super().__init__(path, device)
        folder = export_folder(self.path, ".param")
        meta = read_folder_meta(folder)
        self.net = ncnn.Net()
        self.net.opt.num_threads = int(threads or default_threads())
        param, weights = sorted(folder.glob("*.param"))[0], sorted(folder.glob("*.bin"))[0]
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(weights)) != 0:
            raise UserError(f"{folder}: not a readable ncnn model ({param.name}, {weights.name})")
        apply_meta(self, meta, None)
        self._anchors = torch.tensor(meta["anchors"], dtype=torch.float32)
        self._strides = [float(s) for s in meta["strides"]]
        self.input_name = self.net.input_names()[0]
        self.output_names = list(self.net.output_names())
        if len(self.output_names) != len(self._strides):
            raise UserError(f"{folder}: {len(self.output_names)} outputs but {len(self._strides)} levels in metadata")

    def _maps(self, chw: np.ndarray) -> list[np.ndarray]:
        import ncnn

        ex = self.net.create_extractor()
        ex.input(self.input_name, ncnn.Mat(chw))  # ncnn.Mat borrows chw's memory: chw must outlive ex
        maps = []
        for name in self.output_names:
            ret, m = ex.extract(name)
            if ret != 0:
                raise RuntimeError(f"{self.path}: ncnn failed to compute {name} (error {ret})")
            maps.append(np.array(m, dtype=np.float32))  # a copy
        return maps

    def __call__(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        ims = [np.ascontiguousarray(im) for im in x.detach().cpu().float().numpy()]
        per_image = [self._maps(im) for im in ims]
        na, no = self._anchors.shape[1], self.nc + 5
        raw = []
        for level in range(len(self.output_names)):
            m = torch.from_numpy(np.stack([p[level] for p in per_image]))  # (B, na * no, ny, nx)
            b, _, ny, nx = m.shape
            raw.append(m.view(b, na, no, ny, nx).permute(0, 1, 3, 4, 2))
        return decode_raw(raw, self._anchors, self._strides).to(self.device)


register(lambda p: p.name.lower().endswith("_openvino_model") or p.suffix.lower() == ".xml", OpenVINOBackend)
register(lambda p: p.name.lower().endswith("_ncnn_model") or p.suffix.lower() == ".param", NCNNBackend)
register(is_tflite, TFLiteBackend)
register(is_pte, ExecuTorchBackend)
register(is_mlpackage, CoreMLBackend)
