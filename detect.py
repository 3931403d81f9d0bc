"""Run a detector on images, folders, globs, videos, webcams and streams; save annotated results.

Usage:
    python detect.py --weights best-fused.pt --source data/images          # folder
    python detect.py --weights best.pt --source img.jpg --save-txt --save-conf
    python detect.py --weights best.onnx --source video.mp4               # ONNX Runtime
    python detect.py --weights best.pt --source 0                          # webcam
    python detect.py --weights best.pt --source 'rtsp://host/stream'       # stream
    python detect.py --weights best.pt --source list.txt                   # .txt of files or streams

``--weights`` takes a training checkpoint, a fused checkpoint (both through
``models.experimental.attempt_load``; training checkpoints are fused on load) or an ONNX file
written by ``export.py`` (decoded output, or ``--end2end`` with NMS in the graph).

Results go to ``--project/--name`` (runs/detect/exp, exp2, ...): annotated images and videos
(``.mp4``), and with ``--save-txt`` YOLO labels ``labels/<stem>.txt`` (``<stem>_<frame>.txt`` for
video frames), one ``class cx cy w h [conf]`` row per box, normalised to the original image.
Unreadable files are reported by name and skipped; the run goes on.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.experimental import attempt_load  # noqa: E402
from utils.checkpoint import CheckpointError  # noqa: E402
from utils.datasets import LoadImages, LoadStreams  # noqa: E402
from utils.general import (LOGGER, check_img_size, colorstr, increment_path, non_max_suppression,  # noqa: E402
                           scale_coords, set_logging, xyxy2xywh)
from utils.plots import colors, plot_one_box  # noqa: E402
from utils.torch_utils import select_device, time_synchronized  # noqa: E402

STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")


class OnnxModel:
    """An ``export.py`` ONNX file run by ONNX Runtime, with the metadata export.py stores.

    ``end2end`` files return ``(num_dets, det_boxes, det_scores, det_classes)``; others the
    decoded predictions (B, N, 5 + nc). ``fixed_hw`` is the input size of a static graph (None
    when height and width are dynamic), ``fixed_batch`` likewise.
    """

    def __init__(self, path: Union[str, Path], device: torch.device = torch.device("cpu"),
                 intra_op_threads: Optional[int] = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{path}: ONNX file not found")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        so = ort.SessionOptions()
        if intra_op_threads:
            so.intra_op_num_threads = int(intra_op_threads)
        self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        meta = {}
        for k, v in self.session.get_modelmeta().custom_metadata_map.items():
            try:
                meta[k] = json.loads(v)
            except (TypeError, ValueError):
                meta[k] = v
        self.meta = meta
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.fixed_hw = tuple(shape[2:4]) if all(isinstance(s, int) for s in shape[2:4]) else None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.end2end = "num_dets" in self.output_names
        if not self.end2end and len(self.output_names) != 1:
            raise ValueError(f"{path}: {len(self.output_names)} outputs ({', '.join(self.output_names)}) look like "
                             f"raw per-level head outputs (export.py --no-grid); detect.py needs the decoded "
                             f"output: re-export without --no-grid")
        self.stride = int(meta.get("stride", 32))
        nc = meta.get("nc")
        if nc is None and not self.end2end:
            nc = int(self.session.get_outputs()[0].shape[-1]) - 5
        self.names = list(meta.get("names") or [str(i) for i in range(int(nc or 0))])

    def __call__(self, img: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        out = self.session.run(None, {self.input_name: img.detach().cpu().float().numpy()})
        out = [torch.from_numpy(o) for o in out]
        return out if self.end2end else out[0]


def end2end_to_detections(out: Sequence[torch.Tensor], conf_thres: float = 0.0,
                          classes: Optional[Sequence[int]] = None) -> list[torch.Tensor]:
    """Per-image (n, 6) [x1, y1, x2, y2, conf, cls] from end2end ONNX outputs, optionally filtered."""
    num, boxes, scores, cls = out
    dets = []
    for i in range(boxes.shape[0]):
        n = int(num[i].reshape(-1)[0])
        d = torch.cat((boxes[i, :n].float(), scores[i, :n, None].float(), cls[i, :n, None].float()), 1)
        keep = d[:, 4] > conf_thres
        if classes is not None:
            keep &= (d[:, 5:6] == torch.tensor(list(classes), dtype=d.dtype)).any(1)
        dets.append(d[keep])
    return dets


def load_detector(weights: Union[str, Path], device: torch.device):
    """A fused PyTorch model (``.pt``) or an :class:`OnnxModel` (``.onnx``), plus names and stride."""
    w = Path(weights)
    if w.suffix.lower() == ".onnx":
        m = OnnxModel(w, device)
        return m, m.names, m.stride
    model = attempt_load(w, map_location=device)  # fused for inference
    model.eval()
    names = list(getattr(model, "names", None) or [str(i) for i in range(int(model.nc))])
    return model, names, int(model.stride.max())


def _is_stream(source: str) -> bool:
    """Webcam index, URL stream, or a .txt list whose entries are not all local files."""
    if source.isnumeric() or source.lower().startswith(STREAM_PREFIXES):
        return True
    if source.endswith(".txt") and Path(source).is_file():
        lines = [x.strip() for x in Path(source).read_text().splitlines() if x.strip()]
        return not all(Path(x).expanduser().is_file() for x in lines)
    return False


def _txt_files(source: str) -> list[str]:
    return [x.strip() for x in Path(source).read_text().splitlines() if x.strip()]


@torch.no_grad()
def run(weights: Union[str, Path] = "best.pt", source: str = "data/images", img_size: int = 640,
        conf_thres: float = 0.25, iou_thres: float = 0.45, device: str = "", view_img: bool = False,
        save_txt: bool = False, save_conf: bool = False, nosave: bool = False,
        classes: Optional[Sequence[int]] = None, agnostic_nms: bool = False, augment: bool = False,
        project: Union[str, Path] = "runs/detect", name: str = "exp", exist_ok: bool = False,
        max_det: int = 300, line_thickness: Optional[int] = None) -> dict[str, Any]:
    """Detect objects in ``source``; returns a summary dict (save_dir, per-file detections, skipped, timings)."""
    source = str(source)
    save_img = not nosave
    webcam = _is_stream(source)

    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)

    dev = select_device(device)
    model, names, stride = load_detector(weights, dev)
    is_onnx = isinstance(model, OnnxModel)
    half = dev.type == "cuda" and not is_onnx
    if half:
        model.half()
    auto = True
    if is_onnx:
        if augment:
            LOGGER.warning("WARNING: --augment is not available for ONNX models; ignored")
            augment = False
        if model.fixed_hw is not None:
            if tuple(model.fixed_hw) != (img_size, img_size):
                LOGGER.info(f"{weights}: static ONNX input {model.fixed_hw[0]}x{model.fixed_hw[1]}; using it")
            img_size = list(model.fixed_hw)
            auto = False
        if model.end2end:
            LOGGER.info(f"{weights}: end2end ONNX (NMS in the graph: IoU {model.meta.get('iou_thres')}, "
                        f"conf {model.meta.get('conf_thres')}); --iou-thres/--agnostic-nms come from export time")
    imgsz = [check_img_size(int(s), stride) for s in img_size] if isinstance(img_size, (list, tuple)) \
        else check_img_size(int(img_size), stride)

    if webcam:
        srcs = source if not source.endswith(".txt") else _txt_files(source)
        dataset = LoadStreams(srcs, img_size=imgsz, stride=stride, auto=auto)
    else:
        src: Union[str, list[str]] = _txt_files(source) if source.endswith(".txt") else source
        dataset = LoadImages(src, img_size=imgsz, stride=stride, auto=auto)
    bs = len(dataset.sources) if webcam else 1
    if is_onnx and model.fixed_batch not in (None, bs):
        raise ValueError(f"{weights}: static ONNX batch size {model.fixed_batch}, this source needs {bs}; "
                         f"export with --batch-size {bs} or --dynamic")

    vid_path: list[Optional[str]] = [None] * bs
    vid_writer: list[Optional[cv2.VideoWriter]] = [None] * bs
    seen_paths: set[str] = set()
    detections: dict[str, int] = {}
    saved: list[str] = []
    frames_written: dict[str, int] = {}
    dt = [0.0, 0.0, 0.0]
    n_seen = 0
    view_ok = view_img
    t0 = time.time()
    for path, img, im0s, vid_cap, s in dataset:
        t1 = time_synchronized()
        im = torch.from_numpy(img).to(dev)
        im = im.half() if half else im.float()
        im /= 255.0
        if im.ndimension() == 3:
            im = im.unsqueeze(0)
        t2 = time_synchronized()
        if is_onnx:
            out = model(im)
        else:
            out = model(im, augment=augment)
        t3 = time_synchronized()
        if is_onnx and model.end2end:
            pred = end2end_to_detections(out, conf_thres, classes)
        else:
            pred = non_max_suppression(out, conf_thres, iou_thres, classes=classes, agnostic=agnostic_nms,
                                       max_det=max_det)
        t4 = time_synchronized()
        dt[0] += t2 - t1
        dt[1] += t3 - t2
        dt[2] += t4 - t3

        for i, det in enumerate(pred):
            n_seen += 1
            if webcam:
                p, s_i, im0, frame = Path(path[i]), f"{i}: ", im0s[i].copy(), dataset.count
                p_name = f"stream{i}" if str(path[i]).isnumeric() or "://" in str(path[i]) else p.stem
            else:
                p, s_i, im0, frame = Path(path), s, im0s.copy(), getattr(dataset, "frame", 0)
                p_name = p.stem
            is_video = webcam or dataset.mode == "video"
            seen_paths.add(str(path[i] if webcam else path))
            save_path = str(save_dir / (p_name + ".mp4" if is_video else p.name))
            txt_path = str(save_dir / "labels" / (p_name + (f"_{frame}" if is_video else "")))
            s_i += "%gx%g " % tuple(im.shape[2:])
            gn = torch.tensor(im0.shape)[[1, 0, 1, 0]]  # whn gain
            det = det.detach().cpu().float().clone()
            if len(det):
                det[:, :4] = scale_coords(im.shape[2:], det[:, :4], im0.shape).round()
                for c in det[:, 5].unique():
                    n = int((det[:, 5] == c).sum())
                    s_i += f"{n} {_name(names, c)}{'s' * (n > 1)}, "
                for *xyxy, conf, cls in reversed(det.tolist()):
                    if save_txt:
                        xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
                        line = (int(cls), *xywh, conf) if save_conf else (int(cls), *xywh)
                        with open(txt_path + ".txt", "a") as fh:
                            fh.write(("%g " * len(line)).rstrip() % line + "\n")
                    if save_img or view_img:
                        label = f"{_name(names, cls)} {conf:.2f}"
                        plot_one_box(xyxy, im0, color=colors(int(cls), bgr=True), label=label,
                                     line_thickness=line_thickness)
            else:
                s_i += "(no detections), "
            detections[f"{p}" + (f":{frame}" if is_video else "")] = len(det)
            LOGGER.info(f"{s_i}Done. ({1e3 * (t3 - t2):.1f}ms) Inference, ({1e3 * (t4 - t3):.1f}ms) NMS")

            if view_ok:
                try:
                    cv2.imshow(str(p), im0)
                    cv2.waitKey(1)
                except cv2.error as e:
                    LOGGER.warning(f"WARNING: --view-img unavailable here (headless OpenCV?): {str(e).splitlines()[0]}")
                    view_ok = False

            if save_img:
                if not is_video:
                    if not cv2.imwrite(save_path, im0):
                        LOGGER.warning(f"WARNING: could not write {save_path}")
                    else:
                        saved.append(save_path)
                else:
                    if vid_path[i] != save_path:
                        vid_path[i] = save_path
                        if isinstance(vid_writer[i], cv2.VideoWriter):
                            vid_writer[i].release()
                        fps = vid_cap.get(cv2.CAP_PROP_FPS) if vid_cap else 0
                        if not fps or not np.isfinite(fps) or fps <= 0:
                            fps = dataset.fps[i] if webcam else 30.0
                        h, w = im0.shape[:2]
                        vid_writer[i] = cv2.VideoWriter(save_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                        if not vid_writer[i].isOpened():
                            LOGGER.warning(f"WARNING: could not open a video writer for {save_path}")
                        saved.append(save_path)
                    vid_writer[i].write(im0)
                    frames_written[save_path] = frames_written.get(save_path, 0) + 1

    for w in vid_writer:
        if isinstance(w, cv2.VideoWriter):
            w.release()
    if webcam and hasattr(dataset, "close"):
        dataset.close()

    skipped = [] if webcam else [f for f in dataset.files if f not in seen_paths]
    if skipped:
        LOGGER.warning(f"WARNING: {len(skipped)} file(s) skipped (unreadable or empty): {', '.join(skipped)}")
    speeds = tuple(1e3 * x / max(n_seen, 1) for x in dt)
    shape = (1, 3, *(imgsz if isinstance(imgsz, list) else [imgsz, imgsz]))
    LOGGER.info(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {shape}" % speeds)
    if save_txt or save_img:
        n_lb = len(list((save_dir / "labels").glob("*.txt"))) if save_txt else 0
        extra = f"\n{n_lb} labels saved to {save_dir / 'labels'}" if save_txt else ""
        LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}{extra}")
    LOGGER.info(f"Done. ({time.time() - t0:.3f}s)")
    return {"save_dir": save_dir, "detections": detections, "skipped": skipped, "saved": saved,
            "frames_written": frames_written, "speed_ms": speeds, "images": n_seen}


def _name(names: Sequence[str], c: Union[int, float, torch.Tensor]) -> str:
    c = int(c)
    return str(names[c]) if 0 <= c < len(names) else str(c)


def parse_opt(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=str, default="best.pt", help="model.pt (training or fused) or model.onnx")
    p.add_argument("--source", type=str, default="data/images",
                   help="file, folder, glob, video, webcam index (0), rtsp/http URL or .txt list")
    p.add_argument("--img-size", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.25, help="object confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="IoU threshold for NMS")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--view-img", action="store_true", help="display results")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--nosave", action="store_true", help="do not save images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--augment", action="store_true", help="augmented inference")
    p.add_argument("--project", default="runs/detect", help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--line-thickness", type=int, default=None, help="bounding box thickness (pixels)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    set_logging()
    opt = parse_opt(argv)
    try:
        run(**vars(opt))
    except (FileNotFoundError, ConnectionError, ValueError, CheckpointError) as e:
        LOGGER.error(f"{colorstr('red', 'bold', 'detect failed:')} {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
