"""Evaluate a detector on a dataset split: P, R, mAP@.5, mAP@.5:.95 (COCO's rules), plots, speed.

Usage:
    python test.py --weights runs/train/exp/weights/best.pt --data data/my.yaml --img-size 640
    python test.py --weights best.onnx --data data/my.yaml           # any file models/backend.py loads
    python test.py --weights a.pt b.pt --data data/my.yaml           # ensemble: predictions joined, one NMS
    python test.py --weights best.pt --data data/coco.yaml --save-json   # + pycocotools COCOeval
    python test.py --weights best.pt --data data/my.yaml --task speed     # conf .25, iou .45 timing
    python test.py --weights best.pt --data data/my.yaml --img-size 128 --no-rect   # as a 128x128 export runs

``test()`` is also the validation step of train.py, which passes its EMA model, dataloader
and loss; that model is evaluated as given (not reloaded, not fused, not converted to fp16 in
place). Files are loaded through :func:`models.backend.load_backend`; a file with a fixed input
size or batch (static ONNX, TorchScript) is evaluated at that size / batch, square letterboxed.
Any other model runs rectangular batches (each padded to its images' aspect ratio), which scores
differently; ``--no-rect`` letterboxes it square as a fixed-size export of it would be, so the two
can be compared. The run says which it used.
"""
from __future__ import annotations

if __name__ == "__main__":  # before torch loads (utils/openmp.py: the rule and why)
    from utils.openmp import apply_wait_policy

    apply_wait_policy()
import argparse
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from models.backend import load_backend, set_threads  # noqa: E402
from utils.atomic import write_text
from utils.cli import require, run_cli
from utils.evaluate import Runner, Timers, check_settings, evaluate, runner_from_model
from utils.log import LOGGER, colorstr, set_logging
from utils.names import names_dict
from utils.plots import (
    plot_study,  # noqa: E402
    safe_plot,
)
from utils.runs import increment_path
from utils.torch_utils import select_device  # noqa: E402


def runner_from_files(weights: Any, device: Union[str, torch.device], threads: Optional[int],
                      half_precision: bool, augment: bool) -> Runner:
    """Load one file (or several: an ensemble) of any supported format through models/backend.py."""
    paths = [weights] if isinstance(weights, (str, Path)) else list(weights or [])
    require(len(paths) > 0, "test(): give weights= (one or more model files) or model=")
    for w in paths:
        require(Path(w).exists(), f"--weights {w}: not found")
    set_threads(threads)  # NMS and metrics run in PyTorch too
    dev = select_device(device)
    backend = load_backend([str(w) for w in paths] if len(paths) > 1 else str(paths[0]), dev, threads=threads,
                           half=half_precision and dev.type == "cuda")
    require(not augment or backend.supports_augment,
            f"--augment: needs PyTorch checkpoints; {backend.format} files run as exported")
    if backend.end2end:
        m = backend.meta
        LOGGER.info(f"{paths[0]}: end2end graph: its own NMS decides the detections (conf {m.get('conf_thres', '?')}, "
                    f"iou {m.get('iou_thres', '?')}, at most {m.get('topk_all', '?')} per image), not --conf-thres")

        def call(img: torch.Tensor) -> tuple[Any, Any]:
            return backend.predict(img, conf_thres=0.0), None
    else:
        def call(img: torch.Tensor) -> tuple[Any, Any]:
            return (backend(img, augment=True) if augment else backend(img)), None
    imgsz = tuple(int(v) for v in backend.imgsz) if backend.imgsz is not None else None
    return Runner(call, dev, max(int(backend.stride), 32), names_dict(backend.names), backend.nc,
                  half=bool(backend.fp16), imgsz=imgsz, batch=backend.batch, end2end=bool(backend.end2end))


# --------------------------------------------------------------------------- the evaluation
def test(data: Union[str, Path, dict], weights=None, batch_size: int = 32, imgsz: int = 640,
         conf_thres: float = 0.001, iou_thres: float = 0.65, save_json: bool = False, single_cls: bool = False,
         augment: bool = False, verbose: bool = False, model: Optional[torch.nn.Module] = None, dataloader=None,
         save_dir: Path = Path(""), save_txt: bool = False, save_hybrid: bool = False, save_conf: bool = False,
         plots: bool = True, compute_loss=None, half_precision: bool = True, is_coco: bool = False,
         v5_metric: bool = False, names=None, task: str = "val", device: str = "", workers: int = 8,
         report: Optional[dict] = None, threads: Optional[int] = None, progress: bool = True,
         no_rect: bool = False):
    """Evaluate ``model`` (in memory) or ``weights`` (one file of any format, or several = ensemble) on ``data``.

    Returns ``((mp, mr, map50, map, box_loss, obj_loss, cls_loss), maps, times)``: mean P and R
    at the max-F1 confidence, mAP@.5 and mAP@.5:.95 (COCO's matching and 101-point AP), the
    validation losses when ``compute_loss`` is given (else 0), ``maps`` (nc,) mAP@.5:.95 per
    class, and ``times`` = (pre-process, inference, NMS ms per image, imgsz, imgsz, batch_size).
    ``verbose`` prints the per-class table; ``progress`` shows the tqdm bar. ``report``, when a
    dict is passed, receives ``timings`` (wall seconds per stage: load, preprocess, inference,
    nms, metrics, plots, json, total), ``images``, this evaluator's ``map50``/``map``, and with
    ``save_json`` the pycocotools ``coco_stats`` (12 values) and the json paths. With
    ``save_json`` the returned mAPs are pycocotools' (as YOLOv7 reports). ``no_rect`` letterboxes
    every image square to ``imgsz`` (as a fixed-size file is run) instead of rectangular batches;
    it has no effect on a ``dataloader`` passed in. The engine is :func:`utils.evaluate.evaluate`.
    """
    check_settings(imgsz, batch_size, conf_thres, iou_thres)
    timers = Timers()
    if model is None:
        set_logging()
    runner = (runner_from_model(model, half_precision, augment) if model is not None
              else runner_from_files(weights, device, threads, half_precision, augment))
    return evaluate(runner, data, batch_size=batch_size, imgsz=imgsz, conf_thres=conf_thres, iou_thres=iou_thres,
                    save_json=save_json, single_cls=single_cls, verbose=verbose, dataloader=dataloader,
                    save_dir=save_dir, save_txt=save_txt, save_hybrid=save_hybrid, save_conf=save_conf, plots=plots,
                    compute_loss=compute_loss, is_coco=is_coco, v5_metric=v5_metric, names=names, task=task,
                    workers=workers, report=report, progress=progress, no_rect=no_rect,
                    training=model is not None, weights=weights, timers=timers)


# --------------------------------------------------------------------------- CLI
def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """YOLOv7's test.py flags (same names and meanings), plus --workers and --threads."""
    parser = argparse.ArgumentParser(prog="test.py", description="Evaluate a detector: P, R, mAP (COCO rules).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--weights", nargs="+", type=str, default=["yolov7-tiny-ms0.pt"],
                        help="model file(s): .pt, .torchscript.pt, .onnx, ...; several = ensemble")
    parser.add_argument("--data", type=str, default="data/coco128.yaml", help="dataset yaml")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--img-size", type=int, default=640, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=0.001, help="object confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.65, help="IoU threshold for NMS")
    parser.add_argument("--task", default="val", choices=("train", "val", "test", "speed", "study"),
                        help="split to evaluate, or speed / study")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    parser.add_argument("--augment", action="store_true", help="augmented inference (flip + scales)")
    parser.add_argument("--verbose", action="store_true", help="report mAP by class (and tracebacks on errors)")
    parser.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    parser.add_argument("--save-hybrid", action="store_true", help="save label+prediction hybrid results to *.txt")
    parser.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    parser.add_argument("--save-json", action="store_true", help="save a COCO-json results file and run pycocotools")
    parser.add_argument("--project", default="runs/test", help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--no-trace", action="store_true", help="accepted for YOLOv7 compatibility (nothing is traced)")
    parser.add_argument("--v5-metric", action="store_true", help="use YOLOv5's AP rule instead of COCO's")
    parser.add_argument("--no-rect", action="store_true",
                        help="square letterbox at --img-size, as a fixed-size export runs (default: rectangular "
                             "batches for models that take any shape)")
    parser.add_argument("--workers", type=int, default=8, help="dataloader worker processes")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for PyTorch / ONNX Runtime (default: the cores this process may use)")
    opt = parser.parse_args(argv)
    opt.save_txt |= opt.save_hybrid
    check_settings(opt.img_size, opt.batch_size, opt.conf_thres, opt.iou_thres)
    require(opt.workers >= 0, f"--workers {opt.workers}: must be 0 or more")
    require(opt.threads is None or opt.threads >= 1, f"--threads {opt.threads}: must be at least 1")
    return opt


@contextlib.contextmanager
def run_folder(path: Path, exist_ok: bool) -> Iterator[Path]:
    """A fresh run folder (runs/test/exp, exp2, ...), removed again if the run fails before writing in it."""
    existed = path.is_dir()
    save_dir = increment_path(path, exist_ok=exist_ok)
    try:
        yield save_dir
    except BaseException:
        fresh = not (existed and save_dir == path)
        if fresh and save_dir.is_dir() and not any(save_dir.iterdir()):
            save_dir.rmdir()
        raise


def study(opt: argparse.Namespace, save_dir: Path, common: dict) -> Path:
    """``--task study``: mAP and speed against image size, a table and study.png per weights file."""
    save_dir.mkdir(parents=True, exist_ok=True)
    sizes = list(range(256, 1536 + 128, 128))
    for w in opt.weights:
        f = save_dir / f"study_{Path(opt.data).stem}_{Path(w).stem}.txt"
        rows = []
        for size in sizes:
            LOGGER.info(f"\nRunning {f} point {size}...")
            r, _, times = test(opt.data, w, conf_thres=opt.conf_thres, iou_thres=opt.iou_thres, plots=False,
                               save_dir=save_dir, **dict(common, imgsz=size))
            rows.append([size, *r, *times[:3]])
        buf = io.StringIO()
        np.savetxt(buf, np.array(rows), fmt="%10.4g",
                   header="img_size P R mAP@.5 mAP@.5:.95 box_loss obj_loss cls_loss pre_ms inf_ms nms_ms")
        write_text(f, buf.getvalue())
        safe_plot(plot_study, f)
    return save_dir


def main(argv: Optional[Sequence[str]] = None) -> Any:
    opt = parse_opt(argv)
    set_logging()
    LOGGER.info(colorstr("test: ") + ", ".join(f"{k}={v}" for k, v in vars(opt).items()))
    if opt.no_trace:
        LOGGER.info("--no-trace: test.py never traces the model; nothing to turn off")
    common = dict(batch_size=opt.batch_size, imgsz=opt.img_size, single_cls=opt.single_cls, augment=opt.augment,
                  device=opt.device, v5_metric=opt.v5_metric, workers=opt.workers, threads=opt.threads,
                  no_rect=opt.no_rect)
    with run_folder(Path(opt.project) / opt.name, opt.exist_ok) as save_dir:
        if opt.task in ("train", "val", "test"):
            return test(opt.data, opt.weights, conf_thres=opt.conf_thres, iou_thres=opt.iou_thres,
                        save_json=opt.save_json, verbose=opt.verbose, save_dir=save_dir, save_txt=opt.save_txt,
                        save_hybrid=opt.save_hybrid, save_conf=opt.save_conf, task=opt.task, **common)
        if opt.task == "speed":  # YOLOv7: deployment thresholds, no plots, each file on its own
            return [test(opt.data, w, conf_thres=0.25, iou_thres=0.45, save_json=False, plots=False,
                         save_dir=save_dir, **common) for w in opt.weights]
        return study(opt, save_dir, common)


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """:func:`main` as a command: 0 on success (``main`` itself returns the results)."""
    main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli, prog="test.py"))
