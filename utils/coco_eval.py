"""COCO json for evaluation: image ids from file stems, class -> category ids, result rows, ground truth built
from YOLO labels, and pycocotools' COCOeval on them (string ids mapped to integers in memory, as COCOeval sorts).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from utils.boxes import xyxy2ltwh
from utils.data.coco import coco80_to_coco91_class
from utils.log import LOGGER


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



def to_json(predn: torch.Tensor, iid: Union[int, str], cat_ids: Sequence[int]) -> list[dict]:
    """COCO result rows of one image (ltwh boxes in original pixels; scores unrounded: no ties)."""
    box = xyxy2ltwh(predn[:, :4]).cpu().tolist()
    return [{"image_id": iid, "category_id": cat_ids[int(p[5])], "bbox": [round(x, 3) for x in b], "score": p[4]}
            for p, b in zip(predn.cpu().tolist(), box)]



# --------------------------------------------------------------------------- COCO json
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



def _coco_index(dataset: dict):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
    return gt



def _integer_ids(gt, preds: list[dict], img_ids: Sequence) -> tuple:
    """COCOeval sorts image ids, so string ids are mapped to integers in memory (the files keep them)."""
    remap = {i: k for k, i in enumerate(gt.imgs)}
    ds = copy.deepcopy(gt.dataset)
    for im in ds["images"]:
        im["id"] = remap[im["id"]]
    for a in ds["annotations"]:
        a["image_id"] = remap[a["image_id"]]
    preds = [dict(p, image_id=remap[p["image_id"]]) for p in preds if p["image_id"] in remap]
    return _coco_index(ds), preds, [remap[i] for i in img_ids if i in remap]



def coco_evaluate(anno: Union[str, Path, dict], preds: list[dict], img_ids: Sequence) -> np.ndarray:
    """Run pycocotools COCOeval (bbox) on ``preds`` restricted to ``img_ids``; returns its 12 stats."""
    from pycocotools.cocoeval import COCOeval

    if isinstance(anno, dict):
        gt = _coco_index(copy.deepcopy(anno))
    else:
        with open(anno, encoding="utf-8") as f:
            gt = _coco_index(json.load(f))
    if any(not isinstance(i, int) for i in gt.imgs):
        gt, preds, img_ids = _integer_ids(gt, preds, img_ids)
    missing = {p["image_id"] for p in preds} - set(gt.imgs)
    if missing:
        raise ValueError(f"--save-json: {len(missing)} predicted image ids are not in the ground-truth json "
                         f"(e.g. {sorted(map(str, missing))[:3]}); image ids must be the image file stems")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev = COCOeval(gt, gt.loadRes(preds), "bbox")
        ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for line in buf.getvalue().splitlines():
        if line.strip().startswith("Average"):
            LOGGER.info(line)
    return np.asarray(ev.stats)
