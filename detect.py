"""Run a detector on images, folders, globs, videos, webcams and streams; save annotated results.

Usage:
    python detect.py --weights best-fused.pt --source data/images          # folder
    python detect.py --weights best.pt --source img.jpg --save-txt --save-conf
    python detect.py --weights best.onnx --source video.mp4               # ONNX Runtime
    python detect.py --weights a.pt b.pt --source data/images             # ensemble
    python detect.py --weights best.pt --source 0                          # webcam
    python detect.py --weights best.pt --source 'rtsp://host/stream'       # stream
    python detect.py --weights best.pt --source list.txt                   # .txt of files and streams
    python detect.py --weights best.pt --source video.mp4 --track bytetrack # track IDs (also botsort, a yaml)

``--weights`` takes any file ``models.backend.load_backend`` loads: a training or fused
checkpoint, ``.torchscript.pt``, ``.onnx`` (decoded output, or ``--end2end`` with NMS in the
graph), and the formats registered there; several files form an ensemble (predictions
concatenated, then NMS, as YOLOv7).

Results go to ``--project/--name`` (runs/detect/exp, exp2, ...): annotated images and videos
(``.mp4``), and with ``--save-txt`` YOLO labels ``labels/<stem>.txt`` (``<stem>_<frame>.txt`` for
video frames), one ``class cx cy w h [conf]`` row per box, normalised to the original image.
With ``--track`` (``bytetrack``, ``botsort`` or a tracker yaml, ``utils.tracking``) every video,
stream and folder of frames gets its own tracker; the tracked boxes are drawn with their IDs, and
``--save-txt`` writes one MOTChallenge file per sequence instead, ``labels/<name>.txt`` with rows
``frame,id,left,top,width,height,conf,-1,-1,-1`` (frames from 1; a folder of frames is named after
the folder). Detections down to the tracker's ``track_low_thresh`` reach it (ByteTrack's
second association), whatever ``--conf-thres`` says.
Only regular files are read; damaged, truncated or oversized images, pipes and missing list
entries are named, skipped and listed at the end; the run goes on.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

if __name__ == "__main__":  # before torch loads (utils/openmp.py: the rule and why)
    from utils.openmp import apply_wait_policy

    apply_wait_policy()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.backend import Backend, load_backend  # noqa: E402
from utils.atomic import atomic_path, write_text  # noqa: E402
from utils.boxes import non_max_suppression, scale_coords, xyxy2xywh  # noqa: E402
from utils.checkpoint import load_checkpoint, strip_optimizer  # noqa: E402
from utils.cli import fail, require, run_cli  # noqa: E402
from utils.data.preprocess import to_tensor  # noqa: E402
from utils.data.sources import (  # noqa: E402
    LoadImages,
    LoadStreams,
    folder_frame_numbers,
    frame_sequence,
    is_stream,
    split_sources,
)
from utils.log import LOGGER, colorstr, set_logging  # noqa: E402
from utils.plots import colors, plot_one_box  # noqa: E402
from utils.runs import increment_path  # noqa: E402
from utils.torch_utils import select_device, time_synchronized  # noqa: E402
from utils.tracking import MotFiles, TrackerConfig, TrackSession, load_tracker_config, mot_rows  # noqa: E402

WeightsArg = Union[str, Path, Sequence[Union[str, Path]]]


class VideoSaver:
    """One video writer per output stream: opened when a stream's output path changes, each file
    written to a temp name and renamed into place when it is complete (``utils.atomic``)."""

    def __init__(self, n: int):
        self.paths: list[Optional[str]] = [None] * n
        self.writers: list[Optional[cv2.VideoWriter]] = [None] * n
        self.files: list[Optional[contextlib.ExitStack]] = [None] * n
        self.frames_written: dict[str, int] = {}
        self.saved: list[str] = []

    def write(self, i: int, path: str, frame: np.ndarray, fps: float) -> None:
        if self.paths[i] != path:
            self._close(i)
            self.paths[i] = path
            stack = contextlib.ExitStack()
            tmp = stack.enter_context(atomic_path(path))
            h, w = frame.shape[:2]
            fps = fps if fps and np.isfinite(fps) and fps > 0 else 30.0
            self.writers[i] = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            self.files[i] = stack
            if not self.writers[i].isOpened():
                LOGGER.warning(f"WARNING: could not open a video writer for {path}")
            self.saved.append(path)
        self.writers[i].write(frame)
        self.frames_written[path] = self.frames_written.get(path, 0) + 1

    def _close(self, i: int) -> None:
        if self.writers[i] is not None:
            self.writers[i].release()
            self.writers[i] = None
        if self.files[i] is not None:
            self.files[i].close()  # renames the finished temp file to its path
            self.files[i] = None

    def close(self) -> None:
        for i in range(len(self.writers)):
            self._close(i)


@dataclass
class RunRecord:
    """What a run produced: per-source detection counts, saved files, timings, skipped inputs."""
    detections: dict[str, int] = field(default_factory=dict)
    saved: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seen: set = field(default_factory=set)
    frames_written: dict[str, int] = field(default_factory=dict)
    dt: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # pre-process, inference, NMS, tracking
    last_ms: tuple[float, float] = (0.0, 0.0)
    images: int = 0
    view: bool = False
    track_ms: float = 0.0


def _name(names: Sequence[str], c: Union[int, float, torch.Tensor]) -> str:
    c = int(c)
    return str(names[c]) if 0 <= c < len(names) else str(c)


def make_sources(source: str, imgsz: list[int], stride: int, auto: bool, record: RunRecord) -> list[Any]:
    """The datasets to iterate: a .txt list is split per line into local files and streams."""
    if source.endswith(".txt") and Path(source).is_file() and not source.isnumeric():
        files, streams, problems = split_sources(source)
        for entry, why in problems:
            LOGGER.warning(f"WARNING: {why}")
            record.skipped[entry] = why
        require(files or streams, f"--source {source}: no usable entries")
        out: list[Any] = [LoadImages(files, imgsz, stride, auto)] if files else []
        return out + ([LoadStreams(streams, imgsz, stride, auto)] if streams else [])
    if is_stream(source):
        return [LoadStreams(source, imgsz, stride, auto)]
    return [LoadImages(source, imgsz, stride, auto)]


@torch.no_grad()
def infer(model: Backend, img: np.ndarray, opt: dict, record: RunRecord) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Batch tensor and per-image detections (n, 6) of one dataset item, timed by stage."""
    t1 = time_synchronized()
    im = to_tensor(img, model.device, model.fp16)
    model.check_batch(int(im.shape[0]))
    t2 = time_synchronized()
    if model.end2end:
        pred = model.predict(im, opt["conf_thres"], classes=opt["classes"])
        t3 = t4 = time_synchronized()
    else:
        out = model(im, augment=opt["augment"]) if model.supports_augment else model(im)
        t3 = time_synchronized()
        pred = non_max_suppression(out, opt["conf_thres"], opt["iou_thres"], classes=opt["classes"],
                                   agnostic=opt["agnostic_nms"], max_det=opt["max_det"])
        t4 = time_synchronized()
    for k, v in enumerate((t2 - t1, t3 - t2, t4 - t3)):
        record.dt[k] += v
    record.last_ms = (1e3 * (t3 - t2), 1e3 * (t4 - t3))
    return im, pred


def label_lines(det: torch.Tensor, shape0: Sequence[int], save_conf: bool) -> str:
    """YOLO label rows ``class cx cy w h [conf]`` normalised to the original image, lowest score first."""
    gn = torch.tensor(shape0)[[1, 0, 1, 0]]
    rows = []
    for *xyxy, conf, cls in reversed(det.tolist()):
        xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
        line = (int(cls), *xywh, conf) if save_conf else (int(cls), *xywh)
        rows.append(("%g " * len(line)).rstrip() % line)
    return "".join(r + "\n" for r in rows)


def handle_image(det: torch.Tensor, im_shape: Sequence[int], im0: np.ndarray, where: dict, names: Sequence[str],
                 opt: dict, record: RunRecord, videos: VideoSaver) -> None:
    """Scale one image's boxes to its original, then log, draw, and save image/video/labels."""
    det = det.detach().cpu().float().clone()
    s = where["info"] + "%gx%g " % tuple(im_shape)
    if len(det):
        det[:, :4] = scale_coords(im_shape, det[:, :4], im0.shape).round()
    ids = None
    if opt["track"] is not None:
        det, ids = track_image(det, im0, where, opt, record)
    if len(det):
        for c in det[:, 5].unique():
            n = int((det[:, 5] == c).sum())
            s += f"{n} {_name(names, c)}{'s' * (n > 1)}, "
        if opt["save_txt"] and ids is None:
            write_text(where["txt"], label_lines(det, im0.shape, opt["save_conf"]))
        if opt["save_img"] or opt["view_img"]:
            draw_boxes(im0, det, ids, names, opt["line_thickness"])
    else:
        s += "(no detections), " if ids is None else "(no tracks), "
    record.detections[where["key"]] = len(det)
    extra = f", ({record.track_ms:.1f}ms) tracking" if ids is not None else ""
    LOGGER.info(f"{s}Done. ({record.last_ms[0]:.1f}ms) Inference, ({record.last_ms[1]:.1f}ms) NMS{extra}")
    show(where["name"], im0, record)
    if opt["save_img"]:
        if where["video"]:
            videos.write(where["i"], where["save"], im0, where["fps"])
        else:
            with atomic_path(where["save"]) as tmp:
                require(cv2.imwrite(str(tmp), im0), f"{where['save']}: could not write the image")
            record.saved.append(where["save"])


def track_image(det: torch.Tensor, im0: np.ndarray, where: dict, opt: dict,
                record: RunRecord) -> tuple[torch.Tensor, np.ndarray]:
    """Run the sequence's tracker on one image's detections (original pixels): (tracked boxes (m, 6), ids (m,)).

    With ``--save-txt`` the tracks are appended to the sequence's MOTChallenge file.
    """
    t0 = time.perf_counter()
    frame_no, tracked = opt["track"].step(where["seq"], where["frame_no"], det.numpy(), im0, where["fps"])
    record.track_ms = 1e3 * (time.perf_counter() - t0)
    record.dt[3] += record.track_ms / 1e3
    if opt["save_txt"]:
        opt["mot"].write(where["i"], where["mot"], mot_rows(frame_no, tracked))
    return torch.from_numpy(tracked[:, :6]).float(), tracked[:, 6].astype(np.int64)


def draw_boxes(im0: np.ndarray, det: torch.Tensor, ids: Optional[np.ndarray], names: Sequence[str],
               line_thickness: Optional[int]) -> None:
    """Boxes with class and score; tracked boxes carry their ID and take its colour."""
    for k in reversed(range(len(det))):
        *xyxy, conf, cls = det[k].tolist()
        label = f"{_name(names, cls)} {conf:.2f}"
        colour = colors(int(cls), bgr=True)
        if ids is not None:
            label, colour = f"#{int(ids[k])} {label}", colors(int(ids[k]), bgr=True)
        plot_one_box(xyxy, im0, color=colour, label=label, line_thickness=line_thickness)


def show(name: str, im0: np.ndarray, record: RunRecord) -> None:
    """--view-img: show the frame; a headless OpenCV turns it off with one warning."""
    if not record.view:
        return
    try:
        cv2.imshow(name, im0)
        cv2.waitKey(1)
    except cv2.error as e:
        LOGGER.warning(f"WARNING: --view-img unavailable here (headless OpenCV?): {str(e).splitlines()[0]}")
        record.view = False


def item_places(dataset: Any, path: Any, i: int, info: str, save_dir: Path, vid_cap: Any,
                frames: Optional[dict[str, int]] = None) -> dict:
    """Where image ``i`` of a dataset item comes from, where its outputs go, and its tracked sequence."""
    stream = isinstance(dataset, LoadStreams)
    src = str(path[i] if stream else path)
    p = Path(src)
    frame = dataset.count if stream else getattr(dataset, "frame", 0)
    p_name = (f"stream{i}" if src.isnumeric() or "://" in src else p.stem) if stream else p.stem
    video = stream or dataset.mode == "video"
    fps = (vid_cap.get(cv2.CAP_PROP_FPS) if vid_cap else 0) or (dataset.fps[i] if stream else 30.0)
    seq, seq_name, frame_no = frame_sequence(dataset, src, i, frames or {})
    return {"i": i, "src": src, "name": src, "video": video, "fps": fps, "info": f"{i}: " if stream else info,
            "key": f"{p}" + (f":{frame}" if video else ""),
            "save": str(save_dir / (p_name + ".mp4" if video else p.name)),
            "txt": save_dir / "labels" / (p_name + (f"_{frame}" if video else "") + ".txt"),
            "seq": seq, "frame_no": frame_no, "mot": save_dir / "labels" / f"{seq_name}.txt"}


def process(dataset: Any, model: Backend, opt: dict, save_dir: Path, record: RunRecord) -> None:
    """Run the model over one dataset, saving what ``opt`` asks for."""
    stream = isinstance(dataset, LoadStreams)
    videos = VideoSaver(len(dataset.sources) if stream else 1)
    frames = folder_frame_numbers(dataset) if opt["track"] is not None else {}
    try:
        for path, img, im0s, vid_cap, info in dataset:
            im, pred = infer(model, img, opt, record)
            for i, det in enumerate(pred):
                where = item_places(dataset, path, i, info, save_dir, vid_cap, frames)
                record.images += 1
                record.seen.add(where["src"])
                im0 = (im0s[i] if stream else im0s).copy()
                handle_image(det, im.shape[2:], im0, where, model.names, opt, record, videos)
    finally:
        videos.close()
        if opt["mot"] is not None:
            opt["mot"].close()
        if stream:
            dataset.close()
    record.saved.extend(videos.saved)
    record.frames_written.update(videos.frames_written)
    if not stream:
        for f in dataset.files:
            if f not in record.seen:
                record.skipped.setdefault(f, dataset.skipped.get(f, "not read"))


def update_weights(weights: Sequence[Union[str, Path]]) -> None:
    """--update (YOLOv7): strip optimizer state from each training checkpoint given as weights."""
    for w in weights:
        w = Path(w)
        if w.suffix.lower() not in (".pt", ".pth") or w.name.endswith(".torchscript.pt"):
            LOGGER.info(f"--update: {w} is not a training checkpoint; left as it is")
        elif load_checkpoint(w).get("fused"):
            LOGGER.info(f"--update: {w} is a fused checkpoint (nothing to strip); left as it is")
        else:
            strip_optimizer(w)
            LOGGER.info(f"--update: stripped optimizer state from {w} ({w.stat().st_size / 1e6:.1f} MB)")


def finish(record: RunRecord, save_dir: Path, imgsz: Sequence[int], opt: dict, t0: float) -> dict[str, Any]:
    """Report skipped inputs, speed and where results went; the summary dict ``run`` returns."""
    skipped = list(record.skipped)
    if skipped:
        lines = [why if why.startswith(f) else f"{f}: {why}" for f, why in record.skipped.items()]
        LOGGER.warning(f"WARNING: {len(skipped)} input(s) skipped:\n" + "\n".join("  " + ln for ln in lines))
    speeds = tuple(1e3 * x / max(record.images, 1) for x in record.dt)
    tracks = opt["track"].counts() if opt["track"] is not None else {}
    extra = ", %.1fms tracking" % speeds[3] if opt["track"] is not None else ""
    LOGGER.info(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS{extra} per image at shape "
                f"{(1, 3, *imgsz)}" % speeds[:3])
    if tracks:
        LOGGER.info(f"Tracks: {sum(tracks.values())} ({opt['track'].cfg.tracker_type}): "
                    + ", ".join(f"{n} in {k}" for k, n in tracks.items()))
    if opt["save_txt"] or opt["save_img"]:
        n_lb = len(list((save_dir / "labels").glob("*.txt"))) if opt["save_txt"] else 0
        extra = f"\n{n_lb} labels saved to {save_dir / 'labels'}" if opt["save_txt"] else ""
        LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}{extra}")
    LOGGER.info(f"Done. ({time.time() - t0:.3f}s)")
    return {"save_dir": save_dir, "detections": record.detections, "skipped": skipped, "saved": record.saved,
            "frames_written": record.frames_written, "speed_ms": speeds[:3], "images": record.images,
            "tracks": tracks, "track_ms": speeds[3]}


def _check_args(img_size: Any, conf_thres: float, iou_thres: float, max_det: int) -> None:
    sizes = img_size if isinstance(img_size, (list, tuple)) else [img_size]
    require(all(int(s) > 0 for s in sizes), f"--img-size {img_size}: must be positive")
    require(0 <= conf_thres <= 1, f"--conf-thres {conf_thres}: must be in [0, 1]")
    require(0 <= iou_thres <= 1, f"--iou-thres {iou_thres}: must be in [0, 1]")
    require(max_det >= 1, f"--max-det {max_det}: must be at least 1")


@torch.no_grad()
def run(weights: WeightsArg = "best.pt", source: str = "data/images", img_size: int = 640,
        conf_thres: float = 0.25, iou_thres: float = 0.45, device: str = "", view_img: bool = False,
        save_txt: bool = False, save_conf: bool = False, nosave: bool = False,
        classes: Optional[Sequence[int]] = None, agnostic_nms: bool = False, augment: bool = False,
        project: Union[str, Path] = "runs/detect", name: str = "exp", exist_ok: bool = False,
        max_det: int = 300, line_thickness: Optional[int] = None, threads: Optional[int] = None,
        no_trace: bool = False, update: bool = False, verbose: bool = False,
        track: Union[str, Path, TrackerConfig, None] = None) -> dict[str, Any]:
    """Detect objects in ``source`` (and track them with ``track``: a tracker name, yaml or config);
    returns a summary dict (save_dir, per-file detections, skipped, timings, track IDs per sequence)."""
    t0 = time.time()
    source = str(source)
    _check_args(img_size, conf_thres, iou_thres, max_det)
    tracker = load_tracker_config(track) if track is not None else None
    wlist = [weights] if isinstance(weights, (str, Path)) else list(weights)
    dev = select_device(device)
    model = load_backend(wlist, dev, threads=threads, half=dev.type == "cuda", verbose=True)
    if no_trace:
        LOGGER.info("--no-trace: accepted; models here are never traced at load time")
    if augment and not model.supports_augment:
        LOGGER.warning(f"WARNING: --augment is only available for PyTorch checkpoints, not {model.format}; ignored")
    if model.end2end:
        LOGGER.info(f"{wlist[0]}: end2end graph (NMS inside: IoU {model.meta.get('iou_thres')}, "
                    f"conf {model.meta.get('conf_thres')}); --iou-thres/--agnostic-nms come from export time")
    imgsz, auto = model.input_size(img_size)
    if not auto and list(imgsz) != [int(img_size)] * 2:
        LOGGER.info(f"{wlist[0]}: fixed input {imgsz[0]}x{imgsz[1]}; using it")
    record = RunRecord(view=view_img)
    datasets = make_sources(source, imgsz, model.stride, auto, record)
    for ds in datasets:  # a static-batch file must fit the source before anything is written
        model.check_batch(len(ds.sources) if isinstance(ds, LoadStreams) else 1)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    opt = dict(conf_thres=conf_thres if tracker is None else min(conf_thres, tracker.track_low_thresh),
               iou_thres=iou_thres, classes=classes, agnostic_nms=agnostic_nms,
               augment=augment and model.supports_augment, max_det=max_det, save_txt=save_txt,
               save_conf=save_conf, save_img=not nosave, view_img=view_img, line_thickness=line_thickness,
               track=TrackSession(tracker) if tracker is not None else None,
               mot=MotFiles() if tracker is not None and save_txt else None)
    for dataset in datasets:
        process(dataset, model, opt, save_dir, record)
    if update:
        update_weights(wlist)
    return finish(record, save_dir, imgsz, opt, t0)


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="detect.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", nargs="+", type=str, default=["best.pt"],
                   help="model file(s): .pt (training or fused), .torchscript.pt, .onnx, ...; several = ensemble")
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
    p.add_argument("--update", action="store_true", help="strip optimizer state from the --weights checkpoints")
    p.add_argument("--project", default="runs/detect", help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--no-trace", action="store_true", help="accepted for YOLOv7 compatibility (never traced here)")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--line-thickness", type=int, default=None, help="bounding box thickness (pixels)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for PyTorch / ONNX Runtime (default: the cores this process may use)")
    p.add_argument("--track", nargs="?", const="bytetrack", default=None, metavar="TRACKER",
                   help="track objects: bytetrack (the default of a bare --track), botsort, or a tracker yaml")
    p.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    opt = parse_opt(argv)
    set_logging()
    if opt.threads is not None and opt.threads < 1:
        fail(f"--threads {opt.threads}: must be at least 1")
    run(**vars(opt))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, prog="detect.py"))
