"""Evaluate a detector on a dataset split: P, R, mAP@.5, mAP@.5:.95 (COCO's rules), plots, speed.

Usage:
    python test.py --weights runs/train/exp/weights/best.pt --data data/my.yaml --img-size 640
    python test.py --weights best.pt --data data/coco.yaml --save-json   # + pycocotools COCOeval
    python test.py --weights best.pt --data data/my.yaml --task speed     # conf .25, iou .45 timing

``test()`` is also the validation step of train.py, which passes its EMA model, dataloader
and loss; that model is evaluated as given (not fused, not converted to fp16 in place).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from utils.general import (LOGGER, check_img_size, coco80_to_coco91_class, colorstr, increment_path,
                           non_max_suppression, scale_coords, set_logging, xywh2xyxy, xyxy2ltwh, xyxy2xywh)
from utils.metrics import IOU_THRESHOLDS, ConfusionMatrix, ap_per_class, match_detections
from utils.plots import output_to_target, plot_images, safe_plot

MAX_DET = 300  # detections kept per image by NMS (COCO scores the best 100 per image and class)


def image_id(path: Union[str, Path]) -> Union[int, str]:
    """COCO image id of an image file: its stem, as an int when the stem is numeric."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def class_to_category(data: dict, nc: int, is_coco: bool = False) -> list[int]:
    """Category id written to json for each class index: COCO 80->91 ids, the yaml's mapping, or the index."""
    if is_coco or data.get("coco"):
        ids = coco80_to_coco91_class()
        if nc > len(ids):
            raise ValueError(f"data yaml sets 'coco: true' but has nc={nc} (COCO has 80 classes)")
        return ids[:nc]
    if data.get("category_ids") is not None:
        return [int(c) for c in data["category_ids"]]
    return list(range(nc))


def labels_to_coco_json(dataset, names: Sequence[str], cat_ids: Sequence[int]) -> dict:
    """COCO ground-truth dict built from a dataset's YOLO labels, boxes in original-image pixels."""
    images, anns = [], []
    seen: dict = {}
    for f, lb, (w, h) in zip(dataset.img_files, dataset.labels, dataset.shapes):
        iid = image_id(f)
        if iid in seen:
            raise ValueError(f"--save-json: image id {iid!r} of {f} repeats {seen[iid]}; COCO ids come from "
                             f"file stems, which must be unique")
        seen[iid] = f
        images.append({"id": iid, "file_name": Path(f).name, "width": int(w), "height": int(h)})
        for c, x, y, bw, bh in np.asarray(lb, dtype=np.float64).reshape(-1, 5):
            box = [(x - bw / 2) * w, (y - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": int(cat_ids[int(c)]),
                         "bbox": [round(v, 3) for v in box], "area": round(box[2] * box[3], 3), "iscrowd": 0})
    cats = [{"id": int(cat_ids[i]), "name": str(n)} for i, n in enumerate(names)]
    return {"info": {"description": "ground truth built from YOLO labels by test.py"},
            "images": images, "annotations": anns, "categories": cats}


def coco_evaluate(anno: Union[str, Path, dict], preds: list[dict], img_ids: Sequence) -> np.ndarray:
    """Run pycocotools COCOeval (bbox) on ``preds`` restricted to ``img_ids``; returns its 12 stats.

    String image ids are mapped to integers in memory (COCOeval sorts ids, so they must be of
    one type); the json files keep the ids as written.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(anno)) if not isinstance(anno, dict) else COCO()
        if isinstance(anno, dict):
            gt.dataset = copy.deepcopy(anno)
            gt.createIndex()
    ids = list(gt.imgs)
    if any(not isinstance(i, int) for i in ids):
        remap = {i: k for k, i in enumerate(ids)}
        ds = copy.deepcopy(gt.dataset)
        for im in ds["images"]:
            im["id"] = remap[im["id"]]
        for a in ds["annotations"]:
            a["image_id"] = remap[a["image_id"]]
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = ds
            gt.createIndex()
        preds = [dict(p, image_id=remap[p["image_id"]]) for p in preds if p["image_id"] in remap]
        img_ids = [remap[i] for i in img_ids if i in remap]
    missing = {p["image_id"] for p in preds} - set(gt.imgs)
    if missing:
        raise ValueError(f"--save-json: {len(missing)} predicted image ids are not in the ground-truth json "
                         f"(e.g. {sorted(map(str, missing))[:3]}); image ids must be the image file stems")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        dt = gt.loadRes(preds)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for line in buf.getvalue().splitlines():
        if line.strip().startswith("Average"):
            LOGGER.info(line)
    return np.asarray(ev.stats)


def _load_model(weights, device: torch.device):
    from models.experimental import attempt_load  # imported here: training passes its model in

    if isinstance(weights, (list, tuple)):
        if len(weights) != 1:
            raise ValueError(f"test.py evaluates one model at a time, got --weights {list(weights)} "
                             f"(use --task speed/study to loop over several)")
        weights = weights[0]
    if weights is None:
        raise ValueError("test(): give weights= (a checkpoint) or model=")
    return attempt_load(weights, map_location=device)  # fused, eval mode


@torch.no_grad()
def test(data: Union[str, Path, dict], weights=None, batch_size: int = 32, imgsz: int = 640,
         conf_thres: float = 0.001, iou_thres: float = 0.65, save_json: bool = False, single_cls: bool = False,
         augment: bool = False, verbose: bool = False, model: Optional[torch.nn.Module] = None, dataloader=None,
         save_dir: Path = Path(""), save_txt: bool = False, save_hybrid: bool = False, save_conf: bool = False,
         plots: bool = True, compute_loss=None, half_precision: bool = True, is_coco: bool = False,
         v5_metric: bool = False, names=None, task: str = "val", device: str = "", workers: int = 8,
         report: Optional[dict] = None):
    """Evaluate ``model`` (or the checkpoint ``weights``) on ``data``'s ``task`` split.

    Returns ``((mp, mr, map50, map, box_loss, obj_loss, cls_loss), maps, times)``: mean P and R
    at the max-F1 confidence, mAP@.5 and mAP@.5:.95 (COCO's matching and 101-point AP), the
    validation losses when ``compute_loss`` is given (else 0), ``maps`` (nc,) mAP@.5:.95 per
    class, and ``times`` = (pre-process, inference, NMS ms per image, imgsz, imgsz, batch_size).
    ``report``, when a dict is passed, receives ``timings`` (wall seconds per stage: load,
    preprocess, inference, nms, metrics, plots, json, total), ``images``, this evaluator's
    ``map50``/``map``, and with ``save_json`` the pycocotools ``coco_stats`` (12 values) and the
    json paths. With ``save_json`` the returned mAPs are pycocotools' (as YOLOv7 reports).
    """
    t_start = time.time()
    training = model is not None
    if training:  # called by train.py: evaluate the given (EMA) model as it is
        device = next(model.parameters()).device
        was_training = model.training
    else:
        set_logging()
        from utils.torch_utils import select_device

        device = select_device(device, batch_size=batch_size)
        model = _load_model(weights, device)
        was_training = False

    save_dir = Path(save_dir)
    if plots or save_json or save_txt:
        (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    from utils.dataset_config import check_dataset

    split = task if task in ("train", "val", "test") else "val"
    data = check_dataset(data, require=(split,))
    if not data.get(split):
        raise ValueError(f"{data.get('yaml_file') or 'data'}: has no '{split}' split to evaluate")
    nc = 1 if single_cls else int(data["nc"])
    model_nc = int(getattr(model, "nc", nc))
    if not single_cls and model_nc != nc:
        raise ValueError(f"the model predicts nc={model_nc} classes but {data.get('yaml_file') or 'the data'} "
                         f"has nc={nc}; evaluate with the matching data yaml (or --single-cls)")
    if names is None:
        names = ["item"] if single_cls else (data.get("names") or getattr(model, "names", None))
    names = {i: str(n) for i, n in (names.items() if isinstance(names, dict) else enumerate(names))}
    if len(names) < nc:
        names.update({i: str(i) for i in range(len(names), nc)})
    is_coco = bool(is_coco or data.get("coco"))
    cat_ids = class_to_category(data, nc, is_coco)

    half = device.type == "cuda" and half_precision
    eval_model = model
    if half and next(model.parameters()).dtype != torch.float16:
        eval_model = copy.deepcopy(model).half()  # never change the caller's (EMA) model in place
    eval_model.eval()
    gs = max(int(model.stride.max()), 32)

    if dataloader is None:
        imgsz = check_img_size(imgsz, s=gs)
        if device.type == "cuda":  # warm up kernels before timing
            eval_model(torch.zeros(1, 3, imgsz, imgsz, device=device, dtype=torch.float16 if half else torch.float32))
        from utils.datasets import create_dataloader

        dataloader = create_dataloader(data[split], imgsz, batch_size, gs, single_cls=single_cls, pad=0.5,
                                       rect=True, workers=workers, prefix=colorstr(f"{split}: "), nc=data["nc"])[0]

    iouv = IOU_THRESHOLDS.to(device) if device.type != "mps" else IOU_THRESHOLDS
    confusion_matrix = ConfusionMatrix(nc=nc)
    seen = 0
    s = ("%20s" + "%12s" * 6) % ("Class", "Images", "Labels", "P", "R", "mAP@.5", "mAP@.5:.95")
    t = {k: 0.0 for k in ("load", "preprocess", "inference", "nms", "metrics", "plots", "json")}
    loss = torch.zeros(3, device=device)
    jdict, stats, stat_ids = [], [], []
    plot_threads: list[threading.Thread] = []
    n_txt = 0
    it = iter(tqdm(dataloader, desc=s, disable=training and not verbose, leave=False))
    batch_i = -1
    while True:
        t0 = time.time()
        try:
            img, targets, paths, shapes = next(it)
        except StopIteration:
            break
        batch_i += 1
        t1 = time.time()
        t["load"] += t1 - t0
        img = img.to(device, non_blocking=True)
        img = (img.half() if half else img.float()) / 255.0
        targets = targets.to(device)
        nb, _, height, width = img.shape
        t2 = _sync(device)
        t["preprocess"] += t2 - t1

        out = eval_model(img, augment=augment)
        out, train_out = (out if isinstance(out, tuple) else (out, None))
        t3 = _sync(device)
        t["inference"] += t3 - t2
        if compute_loss is not None and train_out is not None:
            loss += compute_loss([x.float() for x in train_out], targets)[1][:3]

        targets[:, 2:] *= torch.tensor([width, height, width, height], device=device)  # to pixels
        lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if save_hybrid else []
        out = non_max_suppression(out, conf_thres, iou_thres, labels=lb, multi_label=True,
                                  agnostic=single_cls, max_det=MAX_DET)
        t4 = _sync(device)
        t["nms"] += t4 - t3

        for si, pred in enumerate(out):
            labels = targets[targets[:, 0] == si, 1:]
            nl = len(labels)
            tcls = labels[:, 0].cpu().numpy() if nl else np.zeros(0)
            path = Path(paths[si])
            seen += 1
            if single_cls:
                pred[:, 5] = 0
            shape0, ratio_pad = _shapes(shapes[si], img.shape[2:])
            predn = pred.float().clone()
            scale_coords(img.shape[2:], predn[:, :4], shape0, ratio_pad)  # original-image pixels
            if nl:
                tbox = xywh2xyxy(labels[:, 1:5].float())
                scale_coords(img.shape[2:], tbox, shape0, ratio_pad)
                labelsn = torch.cat((labels[:, 0:1].float(), tbox), 1)
            else:
                labelsn = torch.zeros((0, 5), device=device)
            correct, keep = match_detections(predn, labelsn, iouv)
            stats.append((correct[keep].cpu().numpy(), predn[keep, 4].cpu().numpy(),
                          predn[keep, 5].cpu().numpy(), tcls))
            stat_ids.append(image_id(path))
            if plots:
                confusion_matrix.process_batch(predn, labelsn)

            if save_txt:  # YOLO format: cls cx cy w h [conf], normalised to the original image
                gn = torch.tensor([shape0[1], shape0[0], shape0[1], shape0[0]], dtype=torch.float32)
                xywh = (xyxy2xywh(predn[:, :4].cpu()) / gn).tolist()
                with open(save_dir / "labels" / (path.stem + ".txt"), "w") as f:
                    for b, (conf, cls) in zip(xywh, predn[:, 4:6].cpu().tolist()):
                        line = (cls, *b, conf) if save_conf else (cls, *b)
                        f.write(("%g " * len(line)).rstrip() % line + "\n")
                n_txt += 1
            if save_json:
                iid = image_id(path)
                box = xyxy2ltwh(predn[:, :4]).cpu()
                for p, b in zip(predn.cpu().tolist(), box.tolist()):
                    jdict.append({"image_id": iid, "category_id": cat_ids[int(p[5])],
                                  "bbox": [round(x, 3) for x in b], "score": p[4]})  # score unrounded: no ties
        t5 = time.time()
        t["metrics"] += t5 - t4

        if plots and batch_i < 3:  # drawn in the background while the next batches run
            im_cpu, tg_cpu, pr_cpu = img.detach().cpu(), targets.detach().cpu(), output_to_target(out)
            for suffix, tg in (("labels", tg_cpu), ("pred", pr_cpu)):
                th = threading.Thread(target=safe_plot, args=(plot_images, im_cpu, tg, paths,
                                                              save_dir / f"val_batch{batch_i}_{suffix}.jpg", names),
                                      daemon=True)
                th.start()
                plot_threads.append(th)
        t["plots"] += time.time() - t5

    # ---- metrics
    t6 = time.time()
    # images in COCO's order (sorted ids), so score ties across images break as in COCOeval
    order = sorted(range(len(stats)), key=lambda k: (isinstance(stat_ids[k], str), stat_ids[k]))
    stats = [np.concatenate(x, 0) for x in zip(*[stats[k] for k in order])] if stats else []
    p = r = f1 = np.zeros(0)
    ap = np.zeros((0, iouv.numel()))
    ap_class = np.zeros(0, dtype=int)
    nt = np.zeros(nc, dtype=int)
    if stats and len(stats[3]):
        nt = np.bincount(stats[3].astype(int), minlength=nc)
        p, r, ap, f1, ap_class = ap_per_class(*stats, plot=False, save_dir=save_dir, names=names,
                                              v5_metric=v5_metric)
    t["metrics"] += time.time() - t6
    if plots and stats and len(stats[3]):
        t7 = time.time()
        safe_plot(ap_per_class, *stats, plot=True, save_dir=save_dir, names=names, v5_metric=v5_metric)
        t["plots"] += time.time() - t7
    ap50, ap = (ap[:, 0], ap.mean(1)) if len(ap) else (np.zeros(0), np.zeros(0))
    mp, mr, map50, map_ = ((p.mean(), r.mean(), ap50.mean(), ap.mean()) if len(ap) else (0.0, 0.0, 0.0, 0.0))
    if report is not None:
        report.update(map50=float(map50), map=float(map_), images=seen)

    pf = "%20s" + "%12i" * 2 + "%12.3g" * 4
    LOGGER.info(s)
    LOGGER.info(pf % ("all", seen, nt.sum(), mp, mr, map50, map_))
    if not nt.sum():
        LOGGER.warning(f"WARNING: no labels found in the {split} split: mAP cannot be computed (reported as 0)")
    if (verbose or (nc < 50 and not training)) and nc > 1 and len(ap):
        for i, c in enumerate(ap_class):
            LOGGER.info(pf % (names.get(int(c), str(c)), seen, nt[c], p[i], r[i], ap50[i], ap[i]))

    times = tuple(t[k] / max(seen, 1) * 1e3 for k in ("preprocess", "inference", "nms"))
    times = times + (imgsz, imgsz, batch_size)
    if not training:
        LOGGER.info("Speed: %.1f/%.1f/%.1f ms pre-process/inference/NMS per %gx%g image at batch-size %g" % times)

    if plots:
        t7 = time.time()
        confusion_matrix.plot(save_dir=save_dir, names=[names[i] for i in range(nc)])
        for th in plot_threads:
            th.join()
        t["plots"] += time.time() - t7

    if save_json and seen:
        t8 = time.time()
        w = Path(weights[0] if isinstance(weights, (list, tuple)) else weights).stem if weights is not None else ""
        pred_json = save_dir / f"{w}_predictions.json"
        with open(pred_json, "w") as f:
            json.dump(jdict, f)
        LOGGER.info(f"Saved {len(jdict)} detections to {pred_json}")
        ds = dataloader.dataset
        anno = data.get("coco_json") if split == "val" else None  # the yaml's json describes val
        if not anno and not nt.sum():
            LOGGER.info(f"No labels in the {split} split: predictions saved for submission, pycocotools skipped")
        elif anno:
            LOGGER.info(f"Evaluating pycocotools mAP with {anno}...")
        else:
            anno_dict = labels_to_coco_json(ds, [names[i] for i in range(nc)], cat_ids)
            anno = save_dir / f"{Path(str(data.get('yaml_file') or 'data')).stem}_{split}_gt.json"
            with open(anno, "w") as f:
                json.dump(anno_dict, f)
            LOGGER.info(f"Evaluating pycocotools mAP with ground truth built from the YOLO labels: {anno}")
        try:
            if not anno:
                pass
            elif not jdict:
                LOGGER.warning("WARNING: no detections: pycocotools mAP is 0")
            else:
                cstats = coco_evaluate(anno, jdict, [image_id(f) for f in ds.img_files])
                if report is not None:
                    report.update(coco_stats=cstats, pred_json=str(pred_json), anno_json=str(anno))
                LOGGER.info(f"pycocotools mAP@.5:.95 {cstats[0]:.4f} mAP@.5 {cstats[1]:.4f} "
                            f"(this evaluator: {map_:.4f} {map50:.4f})")
                map_, map50 = float(cstats[0]), float(cstats[1])
        except Exception as e:  # report, but keep this evaluator's numbers
            LOGGER.warning(f"WARNING: pycocotools evaluation failed: {e}")
        t["json"] += time.time() - t8

    if not training:
        if save_txt:
            LOGGER.info(f"{n_txt} label files saved to {save_dir / 'labels'}")
        LOGGER.info(f"Results saved to {colorstr('bold', save_dir)}")
    elif was_training:
        model.train()

    maps = np.zeros(nc) + map_
    for i, c in enumerate(ap_class):
        maps[c] = ap[i]
    if report is not None:
        report["timings"] = dict(t, total=time.time() - t_start)
    val_loss = (loss.cpu() / max(len(dataloader), 1)).tolist()
    return (float(mp), float(mr), float(map50), float(map_), *val_loss), maps, times


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.time()


def _shapes(shape_info, img_hw) -> tuple:
    """(original (h, w), ratio_pad) from a dataloader ``shapes`` entry (None: the network input itself)."""
    if shape_info is None:
        return tuple(int(x) for x in img_hw), None
    return shape_info[0], shape_info[1]


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="test.py", description="Evaluate a detector: P, R, mAP (COCO rules).")
    parser.add_argument("--weights", nargs="+", type=str, default=["yolov7-tiny-ms0.pt"], help="model checkpoint(s)")
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
    parser.add_argument("--verbose", action="store_true", help="report mAP by class")
    parser.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    parser.add_argument("--save-hybrid", action="store_true", help="save label+prediction hybrid results to *.txt")
    parser.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    parser.add_argument("--save-json", action="store_true", help="save a COCO-json results file and run pycocotools")
    parser.add_argument("--project", default="runs/test", help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--v5-metric", action="store_true", help="use YOLOv5's AP rule instead of COCO's")
    opt = parser.parse_args(argv)
    opt.save_txt |= opt.save_hybrid
    return opt


def main(argv: Optional[Sequence[str]] = None) -> Any:
    opt = parse_opt(argv)
    set_logging()
    LOGGER.info(colorstr("test: ") + ", ".join(f"{k}={v}" for k, v in vars(opt).items()))
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)
    common = dict(batch_size=opt.batch_size, imgsz=opt.img_size, single_cls=opt.single_cls, augment=opt.augment,
                  device=opt.device, v5_metric=opt.v5_metric)
    if opt.task in ("train", "val", "test"):
        return test(opt.data, opt.weights, conf_thres=opt.conf_thres, iou_thres=opt.iou_thres,
                    save_json=opt.save_json, verbose=opt.verbose, save_dir=save_dir, save_txt=opt.save_txt,
                    save_hybrid=opt.save_hybrid, save_conf=opt.save_conf, task=opt.task, **common)
    if opt.task == "speed":  # YOLOv7: deployment thresholds, no plots
        return [test(opt.data, w, conf_thres=0.25, iou_thres=0.45, save_json=False, plots=False,
                     save_dir=save_dir, **common) for w in opt.weights]
    # study: mAP and speed against image size
    from utils.plots import plot_study

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
        np.savetxt(f, np.array(rows), fmt="%10.4g",
                   header="img_size P R mAP@.5 mAP@.5:.95 box_loss obj_loss cls_loss pre_ms inf_ms nms_ms")
        safe_plot(plot_study, f)
    return save_dir


if __name__ == "__main__":
    main()
