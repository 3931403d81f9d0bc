"""The evaluation engine shared by test.py, train.py's validation, the benchmarks and the hub API: run a model
over a split's batches, match detections to labels at COCO's ten IoU thresholds, and report P, R, mAP@.5 and
mAP@.5:.95 (101-point AP), per class, with plots, YOLO txt and COCO json.

The model is a :class:`Runner`: ``runner(img) -> (decoded predictions, raw head outputs or None)``, built here
from an in-memory model (:func:`runner_from_model`) or by test.py from files of any format. Steps, in order:
:func:`resolve_dataset`, :func:`build_loader`, :func:`run_batches` (per batch :func:`run_batch`, per image
:func:`record_image`), :func:`summarise`, :func:`print_results`, :func:`finish_plots`, :func:`coco_eval`.
"""
from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from utils.atomic import write_text
from utils.boxes import non_max_suppression, scale_coords, xywh2xyxy, xyxy2xywh
from utils.cli import require
from utils.coco_eval import class_to_category, coco_evaluate, image_id, labels_to_coco_json, to_json
from utils.data.config import check_dataset
from utils.data.loader import create_dataloader
from utils.log import LOGGER, colorstr
from utils.metrics import IOU_THRESHOLDS, ConfusionMatrix, ap_per_class, match_detections
from utils.names import names_dict
from utils.plots import output_to_target, plot_images, safe_plot
from utils.sizes import check_img_size

MAX_DET = 300  # detections kept per image by NMS (COCO scores the best 100 per image and class)



STAGES = ("load", "preprocess", "inference", "nms", "metrics", "plots", "json")



HEADER = ("%20s" + "%12s" * 6) % ("Class", "Images", "Labels", "P", "R", "mAP@.5", "mAP@.5:.95")



ROW = "%20s" + "%12i" * 2 + "%12.3g" * 4



# --------------------------------------------------------------------------- small pieces
class Timers:
    """Wall seconds per named stage, summed over a run: ``with timers("nms"): ...``.

    On CUDA a stage ends with a device synchronise, so asynchronous kernels count where they run.
    """

    def __init__(self, stages: Sequence[str] = STAGES):
        self.device: Optional[torch.device] = None
        self.seconds = dict.fromkeys(stages, 0.0)
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def per_image_ms(self, stages: Sequence[str], n: int) -> tuple[float, ...]:
        return tuple(self.seconds[s] / max(n, 1) * 1e3 for s in stages)

    def report(self) -> dict[str, float]:
        return dict(self.seconds, total=time.perf_counter() - self.start)



def check_settings(imgsz: int, batch_size: int, conf_thres: float, iou_thres: float) -> None:
    """One-line errors for values no evaluation can use (named by their CLI flags)."""
    require(int(imgsz) > 0, f"--img-size {imgsz}: must be a positive number of pixels")
    require(int(batch_size) > 0, f"--batch-size {batch_size}: must be at least 1")
    for flag, v in (("--conf-thres", conf_thres), ("--iou-thres", iou_thres)):
        require(np.isfinite(v) and 0.0 <= v <= 1.0, f"{flag} {v}: must be within [0, 1]")



# --------------------------------------------------------------------------- the model behind one call
@dataclass
class Runner:
    """The evaluated model behind one call: ``runner(img) -> (decoded predictions, raw head outputs or None)``.

    Built from the caller's in-memory model (:func:`runner_from_model`) or from files through
    the shared runtime (:func:`runner_from_files`). ``img`` is (N, 3, H, W) float 0..1.
    """

    call: Callable[[torch.Tensor], tuple[Any, Any]]
    device: torch.device
    stride: int
    names: dict[int, str]
    nc: int
    half: bool = False
    imgsz: Optional[tuple[int, int]] = None  # fixed input (h, w) of a static-shape file
    batch: Optional[int] = None  # fixed batch of a static-shape file
    end2end: bool = False  # the file runs NMS itself: call returns final detections per image
    restore: Callable[[], None] = lambda: None  # give the caller's model its train/eval mode back

    def __call__(self, img: torch.Tensor) -> tuple[Any, Any]:
        n = img.shape[0]
        if self.batch is None or n == self.batch:
            return self.call(img)
        pad = img.new_zeros((self.batch - n, *img.shape[1:]))  # a short last batch: pad, then drop
        out, train_out = self.call(torch.cat((img, pad), 0))
        return (out[:n] if torch.is_tensor(out) else list(out)[:n]), None



def runner_from_model(model: torch.nn.Module, half_precision: bool, augment: bool) -> Runner:
    """Evaluate the caller's model as given (train.py's EMA): fp16 only on a copy, mode restored after."""
    device = next(model.parameters()).device
    half = device.type == "cuda" and half_precision
    net = copy.deepcopy(model).half() if half and next(model.parameters()).dtype != torch.float16 else model
    was_training = model.training
    net.eval()

    def call(img: torch.Tensor) -> tuple[Any, Any]:
        out = net(img, augment=augment)
        return out if isinstance(out, tuple) else (out, None)

    nc = int(getattr(model, "nc", 0) or 0)
    return Runner(call, device, max(int(model.stride.max()), 32), names_dict(getattr(model, "names", None)), nc,
                  half=half, restore=(lambda: model.train()) if was_training else (lambda: None))



# --------------------------------------------------------------------------- dataset, loader, settings
@dataclass
class Settings:
    """What one evaluation needs besides the model: split, classes, outputs and thresholds."""

    save_dir: Path
    conf_thres: float
    iou_thres: float
    single_cls: bool
    save_txt: bool
    save_conf: bool
    save_hybrid: bool
    save_json: bool
    plots: bool
    v5_metric: bool
    verbose: bool
    training: bool
    data: dict = field(default_factory=dict)
    split: str = "val"
    nc: int = 0
    names: dict[int, str] = field(default_factory=dict)
    cat_ids: list[int] = field(default_factory=list)



def resolve_dataset(settings: Settings, data: Any, task: str, names: Any, runner: Runner, is_coco: bool) -> None:
    """Load the data yaml into ``settings``: the split to score, nc, class names and json category ids."""
    split = task if task in ("train", "val", "test") else "val"
    data = check_dataset(data, require=(split,))
    where = data.get("yaml_file") or "the data"
    require(bool(data.get(split)), f"{where}: has no '{split}' split to evaluate")
    nc = 1 if settings.single_cls else int(data["nc"])
    if not settings.single_cls and runner.nc and runner.nc != nc:
        raise ValueError(f"the model predicts nc={runner.nc} classes but {where} has nc={nc}; "
                         f"evaluate with the matching data yaml (or --single-cls)")
    if names is None:
        names = ["item"] if settings.single_cls else (data.get("names") or runner.names)
    names = names_dict(names)
    names.update({i: str(i) for i in range(nc) if i not in names})
    settings.data, settings.split, settings.nc, settings.names = data, split, nc, names
    settings.cat_ids = class_to_category(data, nc, bool(is_coco or data.get("coco")))



def letterbox_note(runner: Runner, imgsz: int, rect: bool) -> str:
    """The one line saying how the evaluated images were letterboxed, and why."""
    if rect:
        return (f"letterbox: rectangular batches at --img-size {imgsz} (aspect ratio kept, each batch padded to "
                f"its images' shape; --no-rect for square {imgsz}x{imgsz} as a fixed-size export runs)")
    if runner.imgsz is not None:
        return (f"letterbox: square {imgsz}x{imgsz}, because the model file has a fixed {imgsz}x{imgsz} input "
                f"(its .pt scores the same with --no-rect; export with --dynamic for rectangular batches)")
    return f"letterbox: square {imgsz}x{imgsz} (--no-rect), as a fixed-size export of this model runs"



def build_loader(settings: Settings, runner: Runner, imgsz: int, batch_size: int, workers: int, no_rect: bool = False):
    """The split's dataloader: rectangular batches at ``imgsz``, or square ``imgsz`` x ``imgsz``
    (``no_rect``); a fixed-size file gets its own size (square) and batch."""
    rect = not no_rect
    if runner.imgsz is not None:
        h, w = runner.imgsz
        require(h == w, f"the model file takes a fixed {h}x{w} input; test.py evaluates square inputs only")
        if imgsz != h:
            LOGGER.info(f"the model file has a fixed input of {h}x{w}: evaluating at --img-size {h} (no rect)")
        imgsz, rect = h, False
    else:
        imgsz = check_img_size(imgsz, s=runner.stride)
    if runner.batch is not None and runner.batch != batch_size:
        LOGGER.info(f"the model file takes batches of {runner.batch}: evaluating with --batch-size {runner.batch}")
        batch_size = runner.batch
    if runner.device.type == "cuda":  # warm up kernels before timing
        runner(torch.zeros(runner.batch or 1, 3, imgsz, imgsz, device=runner.device,
                           dtype=torch.float16 if runner.half else torch.float32))
    loader = create_dataloader(settings.data[settings.split], imgsz, batch_size, runner.stride,
                               single_cls=settings.single_cls,
                               pad=0.5, rect=rect, workers=workers, prefix=colorstr(f"{settings.split}: "),
                               nc=settings.data["nc"])[0]
    LOGGER.info(letterbox_note(runner, imgsz, rect))
    return loader, imgsz, batch_size



# --------------------------------------------------------------------------- per image
@dataclass
class Tally:
    """What the batches leave behind: per-image match statistics, json rows, confusion matrix, loss."""

    confusion: ConfusionMatrix
    loss: torch.Tensor
    iouv: torch.Tensor
    stats: list = field(default_factory=list)  # (correct, conf, pred_cls, target_cls) per image
    ids: list = field(default_factory=list)  # COCO image id per entry of ``stats``
    jdict: list = field(default_factory=list)
    plot_threads: list = field(default_factory=list)
    seen: int = 0
    n_txt: int = 0



def _shapes(shape_info, img_hw) -> tuple:
    """(original (h, w), ratio_pad) from a dataloader ``shapes`` entry (None: the network input itself)."""
    if shape_info is None:
        return tuple(int(x) for x in img_hw), None
    return shape_info[0], shape_info[1]



def match_image(pred: torch.Tensor, labels: torch.Tensor, img_hw, shape_info, iouv: torch.Tensor):
    """Scale one image's detections and labels to original pixels and match them at every IoU threshold.

    Returns ``(predn, labelsn, shape0, stat)``: detections (n, 6) and labels (m, 5) [cls, xyxy] in
    original-image pixels, the original (h, w) and ``stat`` = (correct, conf, cls, label classes)
    of the detections COCO keeps.
    """
    shape0, ratio_pad = _shapes(shape_info, img_hw)
    predn = pred.float().clone()
    scale_coords(img_hw, predn[:, :4], shape0, ratio_pad)
    if len(labels):
        tbox = xywh2xyxy(labels[:, 1:5].float())
        scale_coords(img_hw, tbox, shape0, ratio_pad)
        labelsn = torch.cat((labels[:, 0:1].float(), tbox), 1)
    else:
        labelsn = torch.zeros((0, 5), device=pred.device)
    correct, keep = match_detections(predn, labelsn, iouv)
    tcls = labels[:, 0].cpu().numpy() if len(labels) else np.zeros(0)
    stat = (correct[keep].cpu().numpy(), predn[keep, 4].cpu().numpy(), predn[keep, 5].cpu().numpy(), tcls)
    return predn, labelsn, shape0, stat



def save_txt(predn: torch.Tensor, shape0, path: Path, save_conf: bool) -> None:
    """YOLO label file of one image: ``cls cx cy w h [conf]`` normalised to the original image."""
    gn = torch.tensor([shape0[1], shape0[0], shape0[1], shape0[0]], dtype=torch.float32)
    xywh = (xyxy2xywh(predn[:, :4].cpu()) / gn).tolist()
    lines = []
    for b, (conf, cls) in zip(xywh, predn[:, 4:6].cpu().tolist()):
        row = (cls, *b, conf) if save_conf else (cls, *b)
        lines.append(("%g " * len(row)).rstrip() % row + "\n")
    write_text(path, "".join(lines))



def record_image(pred: torch.Tensor, labels: torch.Tensor, path: Path, shape_info, img_hw, settings: Settings,
                 tally: Tally) -> None:
    """Everything one image contributes: match statistics, confusion matrix, txt and json rows."""
    if settings.single_cls:
        pred[:, 5] = 0
    predn, labelsn, shape0, stat = match_image(pred, labels, img_hw, shape_info, tally.iouv)
    tally.seen += 1
    tally.stats.append(stat)
    tally.ids.append(image_id(path))
    if settings.plots:
        tally.confusion.process_batch(predn, labelsn)
    if settings.save_txt:
        save_txt(predn, shape0, settings.save_dir / "labels" / f"{path.stem}.txt", settings.save_conf)
        tally.n_txt += 1
    if settings.save_json:
        tally.jdict += to_json(predn, image_id(path), settings.cat_ids)



# --------------------------------------------------------------------------- per batch
def plot_batch(batch_i: int, img: torch.Tensor, targets: torch.Tensor, out: list, paths, settings: Settings,
               tally: Tally) -> None:
    """val_batch{i}_labels/_pred.jpg of the first three batches, drawn in background threads."""
    im_cpu, tg_cpu, pr_cpu = img.detach().cpu(), targets.detach().cpu(), output_to_target(out)
    for suffix, tg in (("labels", tg_cpu), ("pred", pr_cpu)):
        f = settings.save_dir / f"val_batch{batch_i}_{suffix}.jpg"
        th = threading.Thread(target=safe_plot, args=(plot_images, im_cpu, tg, paths, f, settings.names), daemon=True)
        th.start()
        tally.plot_threads.append(th)



def run_batch(batch_i: int, batch, runner: Runner, settings: Settings, tally: Tally, timers: Timers,
              compute_loss=None) -> None:
    """Preprocess, infer, (loss), NMS, then record every image of one batch."""
    img, targets, paths, shapes = batch
    with timers("preprocess"):
        img = img.to(runner.device, non_blocking=True)
        img = (img.half() if runner.half else img.float()) / 255.0
        targets = targets.to(runner.device)
    with timers("inference"):
        out, train_out = runner(img)
        if compute_loss is not None and train_out is not None:
            tally.loss += compute_loss([x.float() for x in train_out], targets)[1][:3]
    nb, _, height, width = img.shape
    targets[:, 2:] *= torch.tensor([width, height, width, height], device=targets.device)  # to pixels
    with timers("nms"):
        if not runner.end2end:
            lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if settings.save_hybrid else []
            out = non_max_suppression(out, settings.conf_thres, settings.iou_thres, labels=lb, multi_label=True,
                                      agnostic=settings.single_cls, max_det=MAX_DET)
    with timers("metrics"):
        for si, pred in enumerate(out):
            record_image(pred, targets[targets[:, 0] == si, 1:], Path(paths[si]), shapes[si], img.shape[2:],
                         settings, tally)
    if settings.plots and batch_i < 3:
        with timers("plots"):
            plot_batch(batch_i, img, targets, out, paths, settings, tally)



def run_batches(loader, runner: Runner, settings: Settings, tally: Tally, timers: Timers, compute_loss=None,
                progress: bool = True) -> None:
    """All batches of ``loader``, behind a tqdm progress bar (train.py's validation shows it too)."""
    it = iter(tqdm(loader, desc=HEADER, disable=not progress, leave=not settings.training))
    batch_i = 0
    while True:
        with timers("load"):
            batch = next(it, None)  # None once the loader (and the bar) is done
        if batch is None:
            break
        run_batch(batch_i, batch, runner, settings, tally, timers, compute_loss)
        batch_i += 1



# --------------------------------------------------------------------------- results
@dataclass
class Summary:
    """Per-class results (classes that have labels) and their means."""

    p: np.ndarray
    r: np.ndarray
    ap50: np.ndarray
    ap: np.ndarray  # mAP@.5:.95 per class
    ap_class: np.ndarray
    nt: np.ndarray  # labels per class (all nc)

    @property
    def means(self) -> tuple[float, float, float, float]:
        if not len(self.ap):
            return 0.0, 0.0, 0.0, 0.0
        return float(self.p.mean()), float(self.r.mean()), float(self.ap50.mean()), float(self.ap.mean())

    def maps(self, nc: int, fill: float) -> np.ndarray:
        """mAP@.5:.95 of every class (``fill`` for classes without labels)."""
        maps = np.zeros(nc) + fill
        for i, c in enumerate(self.ap_class):
            maps[c] = self.ap[i]
        return maps



def summarise(tally: Tally, settings: Settings) -> tuple[Summary, list]:
    """AP per class at the ten IoU thresholds, P and R at the max-F1 confidence; also the joined stats."""
    # images in COCO's order (sorted ids), so score ties across images break as in COCOeval
    order = sorted(range(len(tally.stats)), key=lambda k: (isinstance(tally.ids[k], str), tally.ids[k]))
    stats = [np.concatenate(x, 0) for x in zip(*[tally.stats[k] for k in order])] if tally.stats else []
    nt = np.zeros(settings.nc, dtype=int)
    empty = np.zeros(0)
    if not (stats and len(stats[3])):
        return Summary(empty, empty, empty, empty, np.zeros(0, dtype=int), nt), stats
    nt = np.bincount(stats[3].astype(int), minlength=settings.nc)
    p, r, ap, _, ap_class = ap_per_class(*stats, plot=False, save_dir=settings.save_dir, names=settings.names,
                                         v5_metric=settings.v5_metric)
    return Summary(p, r, ap[:, 0], ap.mean(1), ap_class, nt), stats



def print_results(s: Summary, settings: Settings, seen: int) -> None:
    """The 'all' row, and per class when asked (``verbose``) or outside training for nc < 50 (YOLOv7's rule)."""
    LOGGER.info(HEADER)
    LOGGER.info(ROW % ("all", seen, s.nt.sum(), *s.means))
    if not s.nt.sum():
        LOGGER.warning(f"WARNING: no labels found in the {settings.split} split: mAP cannot be computed "
                       f"(reported as 0)")
    if (settings.verbose or (settings.nc < 50 and not settings.training)) and settings.nc > 1 and len(s.ap):
        for i, c in enumerate(s.ap_class):
            LOGGER.info(ROW % (settings.names.get(int(c), str(c)), seen, s.nt[c], s.p[i], s.r[i], s.ap50[i], s.ap[i]))



def finish_plots(stats: list, settings: Settings, tally: Tally) -> None:
    """PR/F1/P/R curves and the confusion matrix; waits for the batch mosaics."""
    if stats and len(stats[3]):
        safe_plot(ap_per_class, *stats, plot=True, save_dir=settings.save_dir, names=settings.names,
                  v5_metric=settings.v5_metric)
    tally.confusion.plot(save_dir=settings.save_dir, names=[settings.names[i] for i in range(settings.nc)])
    for th in tally.plot_threads:
        th.join()



def ground_truth_json(settings: Settings, dataset, nt_sum: int) -> Optional[Union[str, Path]]:
    """The annotation json to score against: the yaml's ``coco_json`` (val) or one built from the labels."""
    anno = settings.data.get("coco_json") if settings.split == "val" else None  # the yaml's json describes val
    if anno:
        LOGGER.info(f"Evaluating pycocotools mAP with {anno}...")
        return anno
    if not nt_sum:
        LOGGER.info(f"No labels in the {settings.split} split: predictions saved for submission, pycocotools skipped")
        return None
    anno = settings.save_dir / f"{Path(str(settings.data.get('yaml_file') or 'data')).stem}_{settings.split}_gt.json"
    names = [settings.names[i] for i in range(settings.nc)]
    write_text(anno, json.dumps(labels_to_coco_json(dataset, names, settings.cat_ids)))
    LOGGER.info(f"Evaluating pycocotools mAP with ground truth built from the YOLO labels: {anno}")
    return anno



def coco_eval(settings: Settings, tally: Tally, dataset, weights: Any, nt_sum: int,
              report: Optional[dict]) -> Optional[np.ndarray]:
    """Write ``<weights>_predictions.json`` and score it with pycocotools; None when it cannot be scored."""
    w = weights[0] if isinstance(weights, (list, tuple)) and weights else weights
    pred_json = settings.save_dir / f"{Path(w).stem if w is not None else ''}_predictions.json"
    write_text(pred_json, json.dumps(tally.jdict))
    LOGGER.info(f"Saved {len(tally.jdict)} detections to {pred_json}")
    anno = ground_truth_json(settings, dataset, nt_sum)
    if not anno:
        return None
    if not tally.jdict:
        LOGGER.warning("WARNING: no detections: pycocotools mAP is 0")
        return None
    try:
        cstats = coco_evaluate(anno, tally.jdict, [image_id(f) for f in dataset.img_files])
    except Exception as e:  # report, but keep this evaluator's numbers
        LOGGER.warning(f"WARNING: pycocotools evaluation failed: {e}")
        return None
    if report is not None:
        report.update(coco_stats=cstats, pred_json=str(pred_json), anno_json=str(anno))
    return cstats


@torch.no_grad()
def evaluate(runner: Runner, data: Union[str, Path, dict], batch_size: int = 32, imgsz: int = 640,
             conf_thres: float = 0.001, iou_thres: float = 0.65, save_json: bool = False, single_cls: bool = False,
             verbose: bool = False, dataloader=None, save_dir: Path = Path(""), save_txt: bool = False,
             save_hybrid: bool = False, save_conf: bool = False, plots: bool = True, compute_loss=None,
             is_coco: bool = False, v5_metric: bool = False, names=None, task: str = "val", workers: int = 8,
             report: Optional[dict] = None, progress: bool = True, no_rect: bool = False, training: bool = False,
             weights: Any = None, timers: Optional[Timers] = None):
    """Evaluate ``runner`` on ``data``; what test.py's ``test()`` returns (see there for every argument).

    ``training`` marks train.py's validation (quieter: no speed line, no per-class table unless ``verbose``);
    ``weights`` only names the predictions json; ``timers`` continue a caller's clock (model loading included).
    """
    check_settings(imgsz, batch_size, conf_thres, iou_thres)
    timers = timers or Timers()
    timers.device = runner.device
    settings = Settings(Path(save_dir), conf_thres, iou_thres, single_cls, save_txt, save_conf, save_hybrid, save_json,
                   plots, v5_metric, verbose, training=training)
    resolve_dataset(settings, data, task, names, runner, is_coco)
    if dataloader is None:
        dataloader, imgsz, batch_size = build_loader(settings, runner, imgsz, batch_size, workers, no_rect)
    if plots or save_json or save_txt:
        (settings.save_dir / "labels" if save_txt else settings.save_dir).mkdir(parents=True, exist_ok=True)
    iouv = IOU_THRESHOLDS.to(runner.device) if runner.device.type != "mps" else IOU_THRESHOLDS
    tally = Tally(ConfusionMatrix(nc=settings.nc), torch.zeros(3, device=runner.device), iouv)

    run_batches(dataloader, runner, settings, tally, timers, compute_loss, progress)
    with timers("metrics"):
        summary, stats = summarise(tally, settings)
    mp, mr, map50, map_ = summary.means
    if report is not None:
        report.update(map50=map50, map=map_, images=tally.seen)
    print_results(summary, settings, tally.seen)
    times = timers.per_image_ms(("preprocess", "inference", "nms"), tally.seen) + (imgsz, imgsz, batch_size)
    if not settings.training:
        LOGGER.info("Speed: %.1f/%.1f/%.1f ms pre-process/inference/NMS per %gx%g image at batch-size %g" % times)
    if plots:
        with timers("plots"):
            finish_plots(stats, settings, tally)
    if save_json and tally.seen:
        with timers("json"):
            cstats = coco_eval(settings, tally, dataloader.dataset, weights, int(summary.nt.sum()), report)
        if cstats is not None:
            LOGGER.info(f"pycocotools mAP@.5:.95 {cstats[0]:.4f} mAP@.5 {cstats[1]:.4f} "
                        f"(this evaluator: {map_:.4f} {map50:.4f})")
            map_, map50 = float(cstats[0]), float(cstats[1])
    if not settings.training:
        if save_txt:
            LOGGER.info(f"{tally.n_txt} label files saved to {settings.save_dir / 'labels'}")
        LOGGER.info(f"Results saved to {colorstr('bold', settings.save_dir)}")
    runner.restore()
    if report is not None:
        report["timings"] = timers.report()
    val_loss = (tally.loss.cpu() / max(len(dataloader), 1)).tolist()
    return (mp, mr, map50, map_, *val_loss), summary.maps(settings.nc, map_), times


def evaluate_model(model: torch.nn.Module, data: Union[str, Path, dict], half_precision: bool = True,
                   augment: bool = False, **kwargs: Any):
    """:func:`evaluate` of an in-memory model as given (train.py's validation: not reloaded, fp16 only on a copy,
    its train/eval mode restored)."""
    return evaluate(runner_from_model(model, half_precision, augment), data, training=True, **kwargs)
