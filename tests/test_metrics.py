"""utils/metrics.py: COCO-faithful matching and AP (checked against pycocotools), P/R, confusion matrix."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from utils.metrics import ConfusionMatrix, ap_per_class, compute_ap, fitness, match_detections, topk_per_class


# --------------------------------------------------------------------------- helpers
def evaluate_ours(dets: list[np.ndarray], labels: list[np.ndarray], v5_metric: bool = False):
    """dets[i]: (n, 6) [x1, y1, x2, y2, conf, cls]; labels[i]: (m, 5) [cls, x1, y1, x2, y2]."""
    stats = []
    for d, lb in zip(dets, labels):
        d = torch.as_tensor(d, dtype=torch.float32).reshape(-1, 6)
        lb = torch.as_tensor(lb, dtype=torch.float32).reshape(-1, 5)
        correct, keep = match_detections(d, lb)
        stats.append((correct[keep].numpy(), d[keep, 4].numpy(), d[keep, 5].numpy(), lb[:, 0].numpy()))
    tp, conf, pcls, tcls = (np.concatenate(x, 0) for x in zip(*stats))
    p, r, ap, f1, uc = ap_per_class(tp, conf, pcls, tcls, v5_metric=v5_metric)
    if not len(uc):
        return 0.0, 0.0
    return ap[:, 0].mean(), ap.mean()


def evaluate_coco(dets: list[np.ndarray], labels: list[np.ndarray], nc: int):
    """The same detections through pycocotools COCOeval: (mAP@.5, mAP@.5:.95)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, results = [], [], []
    for i, (d, lb) in enumerate(zip(dets, labels)):
        images.append({"id": i, "width": 1000, "height": 1000, "file_name": f"{i}.jpg"})
        for c, x1, y1, x2, y2 in np.asarray(lb, dtype=np.float64).reshape(-1, 5):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        for x1, y1, x2, y2, s, c in np.asarray(d, dtype=np.float64).reshape(-1, 6):
            results.append({"image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(s)})
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c, "name": str(c)} for c in range(nc)]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[1], ev.stats[0]


def random_boxes(rng, n, size=1000.0):
    xy = rng.uniform(0, size * 0.8, (n, 2))
    wh = rng.uniform(size * 0.02, size * 0.3, (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, size)], 1)


def jitter(rng, boxes, scale):
    w = boxes[:, 2:] - boxes[:, :2]
    return boxes + rng.normal(0, scale, boxes.shape) * np.concatenate([w, w], 1)


def generated_case(seed: int, n_img: int = 12, nc: int = 4):
    rng = np.random.default_rng(seed)
    dets, labels = [], []
    for i in range(n_img):
        m = 0 if i % 5 == 4 else int(rng.integers(1, 9))  # some images without labels
        gt = random_boxes(rng, m)
        gcls = rng.integers(0, nc, m)
        if i % 6 == 1 and m:  # a crowd of overlapping labels of one class
            gt[1:] = jitter(rng, np.repeat(gt[:1], m - 1, 0), 0.15)
            gcls[:] = gcls[0]
        labels.append(np.concatenate([gcls[:, None], gt], 1))
        parts = []
        if m:
            found = rng.random(m) > 0.25  # missed objects
            for _ in range(int(rng.integers(1, 3))):  # perturbed copies (duplicates too)
                b = jitter(rng, gt[found], rng.choice([0.02, 0.06, 0.12]))
                c = gcls[found].copy()
                flip = rng.random(len(c)) < 0.1  # wrong class
                c[flip] = rng.integers(0, nc, flip.sum())
                parts.append(np.concatenate([b, rng.uniform(0.05, 1, (len(b), 1)), c[:, None]], 1))
        nfp = int(rng.integers(0, 6)) if i % 5 != 3 else 0  # false positives (some images none)
        if i % 7 == 2:
            nfp = 150  # more than 100 of a class -> COCO's per-image/class top-100 limit
            fp = random_boxes(rng, nfp)
            parts.append(np.concatenate([fp, rng.uniform(0.0, 0.6, (nfp, 1)), np.zeros((nfp, 1))], 1))
        elif nfp:
            fp = random_boxes(rng, nfp)
            parts.append(np.concatenate([fp, rng.uniform(0.0, 0.5, (nfp, 1)),
                                         rng.integers(0, nc, (nfp, 1))], 1))
        d = np.concatenate(parts, 0) if parts else np.zeros((0, 6))
        d[:, :4] = np.clip(d[:, :4], 0, 1000)
        d[:, 2:4] = np.maximum(d[:, 2:4], d[:, :2] + 1)
        dets.append(d)
    return dets, labels, nc


# --------------------------------------------------------------------------- simple cases
def test_perfect_predictions_give_one():
    rng = np.random.default_rng(0)
    labels, dets = [], []
    for _ in range(5):
        b = random_boxes(rng, 4)
        c = rng.integers(0, 3, 4)
        labels.append(np.concatenate([c[:, None], b], 1))
        dets.append(np.concatenate([b, rng.uniform(0.5, 1, (4, 1)), c[:, None]], 1))
    map50, map_ = evaluate_ours(dets, labels)
    assert map50 == pytest.approx(1.0) and map_ == pytest.approx(1.0)


def test_no_predictions_give_zero():
    labels = [np.array([[0, 10, 10, 50, 50], [1, 60, 60, 90, 90]])]
    map50, map_ = evaluate_ours([np.zeros((0, 6))], labels)
    assert map50 == 0 and map_ == 0


def test_hand_computed_case():
    # one class, 2 labels; detections (by score): TP, FP, TP
    # -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; envelope 1 up to recall .5, 2/3 above.
    labels = [np.array([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30]], dtype=float)]
    dets = [np.array([[0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.8, 0], [20, 20, 30, 30, 0.7, 0]], dtype=float)]
    map50, map_ = evaluate_ours(dets, labels)
    expected = (51 * 1.0 + 50 * 2 / 3) / 101  # recall points 0..0.50 -> 1, 0.51..1 -> 2/3
    assert map50 == pytest.approx(expected, abs=1e-9)
    assert map_ == pytest.approx(expected, abs=1e-9)  # exact boxes: same at every threshold


def test_threshold_dependent_matching():
    # IoU of the detection with the label = 0.64: TP at 0.50..0.60, FP from 0.65 up
    labels = [np.array([[0, 0, 0, 10, 10]], dtype=float)]
    dets = [np.array([[0, 0, 8, 8, 0.9, 0]], dtype=float)]
    correct, keep = match_detections(torch.tensor(dets[0]).float(), torch.tensor(labels[0]).float())
    assert keep.all()
    assert correct[0].tolist() == [True, True, True, False, False, False, False, False, False, False]
    map50, map_ = evaluate_ours(dets, labels)
    assert map50 == pytest.approx(1.0) and map_ == pytest.approx(0.3)


def test_greedy_by_score_not_by_iou():
    # A (score .9) overlaps both labels; L1 best (IoU .8 vs .6). B (score .8) only matches L1 well.
    # COCO: A takes L1, B must take L2 if IoU >= t, else is a FP. IoU-first matching would differ.
    lab = torch.tensor([[0, 0, 0, 10, 10], [0, 4, 0, 14, 10]], dtype=torch.float32)
    a = [0.0, 0, 11, 10]  # IoU with L1 = 10/11, with L2 = 7/14=.5
    b = [0.0, 0, 10, 10]  # IoU with L1 = 1, with L2 = 6/14 = .43
    det = torch.tensor([a + [0.9, 0], b + [0.8, 0]])
    correct, _ = match_detections(det, lab)
    assert correct[0, 0] and not correct[1, 0]  # at 0.5: A->L1, B has only L2 (.43) -> FP


def test_class_mismatch_never_matches():
    lab = torch.tensor([[1, 0, 0, 10, 10]], dtype=torch.float32)
    det = torch.tensor([[0, 0, 10, 10, 0.9, 0]], dtype=torch.float32)
    correct, _ = match_detections(det, lab)
    assert not correct.any()


def test_topk_per_class():
    cls = torch.tensor([0] * 5 + [1] * 3, dtype=torch.float32)
    conf = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.2, 0.4, 0.8, 0.6])
    keep = topk_per_class(cls, conf, k=2)
    assert keep.tolist() == [False, True, False, True, False, False, True, True]


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_pycocotools(seed):
    dets, labels, nc = generated_case(seed)
    ours = evaluate_ours(dets, labels)
    ref = evaluate_coco(dets, labels, nc)
    assert abs(ours[0] - ref[0]) <= 0.002, (ours, ref)
    assert abs(ours[1] - ref[1]) <= 0.002, (ours, ref)


def test_agrees_with_pycocotools_dense_duplicates():
    """Many overlapping duplicates per label: the case where greedy-by-score order matters."""
    rng = np.random.default_rng(123)
    dets, labels = [], []
    for _ in range(8):
        gt = random_boxes(rng, 6)
        gt[3:] = jitter(rng, gt[:3], 0.2)  # labels overlapping each other
        c = rng.integers(0, 2, 6)
        labels.append(np.concatenate([c[:, None], gt], 1))
        rep = np.repeat(np.arange(6), 5)
        b = jitter(rng, gt[rep], 0.1)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
        dets.append(np.concatenate([b, rng.random((len(b), 1)), c[rep, None]], 1))
    ours = evaluate_ours(dets, labels)
    ref = evaluate_coco(dets, labels, 2)
    assert abs(ours[0] - ref[0]) <= 0.002 and abs(ours[1] - ref[1]) <= 0.002, (ours, ref)


def test_top100_per_image_and_class():
    """COCO counts only the 100 best detections per image and class: a TP ranked 101st is dropped."""
    fps = np.concatenate([random_boxes(np.random.default_rng(0), 100) + 2000, np.full((100, 1), 0.9),
                          np.zeros((100, 1))], 1)  # far from any label
    dets = [np.concatenate([fps, [[0, 0, 10, 10, 0.5, 0]]]), np.array([[0, 0, 10, 10, 0.8, 0]])]
    labels = [np.array([[0, 0, 0, 10, 10]]), np.array([[0, 0, 0, 10, 10]])]
    map50, _ = evaluate_ours(dets, labels)
    assert map50 == pytest.approx(51 / 101 * (1 / 101))  # recall .5 reached at precision 1/101
    assert map50 == pytest.approx(evaluate_coco(dets, labels, 1)[0], abs=1e-9)


def coco_greedy_reference(det: np.ndarray, lab: np.ndarray, thresholds) -> np.ndarray:
    """COCOeval.evaluateImg's matching, written out literally (one detection at a time)."""
    import torchvision

    correct = np.zeros((len(det), len(thresholds)), bool)
    for c in np.unique(det[:, 5]):
        di = np.nonzero(det[:, 5] == c)[0]
        di = di[np.argsort(-det[di, 4], kind="mergesort")][:100]
        gi = np.nonzero(lab[:, 0] == c)[0]
        if not len(gi):
            continue
        ious = torchvision.ops.box_iou(torch.tensor(det[di, :4]).double(), torch.tensor(lab[gi, 1:]).double()).numpy()
        for ti, t in enumerate(thresholds):
            taken = np.zeros(len(gi), bool)
            for dn, d in enumerate(di):
                best, m = min(t, 1 - 1e-10), -1
                for gn in range(len(gi)):
                    if taken[gn] or ious[dn, gn] < best:
                        continue
                    best, m = ious[dn, gn], gn
                if m >= 0:
                    taken[m] = True
                    correct[d, ti] = True
    return correct


@pytest.mark.parametrize("seed", range(3))
def test_vectorised_matching_equals_sequential_greedy(seed):
    rng = np.random.default_rng(seed)
    thresholds = np.linspace(0.5, 0.95, 10)
    for _ in range(60):
        m = int(rng.integers(0, 8))
        gt = random_boxes(rng, m, 100.0)
        if m > 2:
            gt[m // 2:] = jitter(rng, np.repeat(gt[:1], m - m // 2, 0), 0.1)  # overlapping labels
            gt[-1] = gt[0]  # an exact duplicate: equal IoUs, COCO keeps the last label
        lab = np.concatenate([rng.integers(0, 2, (m, 1)), gt], 1)
        n = int(rng.integers(0, 25))
        src = rng.integers(0, max(m, 1), n)
        b = jitter(rng, gt[src], 0.08) if m else random_boxes(rng, n, 100.0)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 0.5)
        score = np.round(rng.random((n, 1)), 1)  # many ties
        cls = lab[src, :1] if m else np.zeros((n, 1))
        det = np.concatenate([b, score, cls], 1)
        correct, keep = match_detections(torch.tensor(det).float(), torch.tensor(lab).float())
        ref = coco_greedy_reference(det.astype(np.float32).astype(np.float64),
                                    lab.astype(np.float32).astype(np.float64), thresholds)
        assert np.array_equal(correct.numpy(), ref), (det, lab)


# --------------------------------------------------------------------------- AP / P / R / fitness
def test_compute_ap_rules():
    rec, prec = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert compute_ap(rec, prec) == pytest.approx((51 * 1.0 + 50 * 0.5) / 101)
    v5 = compute_ap(rec, prec, v5_metric=True)
    # trapezoid area: 0.5 at precision 1, a ramp 1 -> 0.5 over recall .5..1 (0.375), minus the
    # last 0.01-wide step falling to the (recall 1, precision 0) sentinel (0.0025)
    assert v5 == pytest.approx(0.5 + 0.375 - 0.0025)
    assert compute_ap(np.array([]), np.array([])) == 0.0


def test_ap_per_class_pr_at_max_f1():
    # class 0: 2 labels, detections TP(.9), TP(.8), FP(.3); best F1 threshold keeps the two TPs
    tp = np.array([[1], [1], [0]], dtype=bool).repeat(10, 1)
    conf = np.array([0.9, 0.8, 0.3])
    p, r, ap, f1, uc = ap_per_class(tp, conf, np.zeros(3), np.zeros(2))
    assert uc.tolist() == [0]
    assert p[0] == pytest.approx(1.0, abs=1e-3) and r[0] == pytest.approx(1.0, abs=1e-3)
    assert ap.shape == (1, 10) and ap[0, 0] == pytest.approx(1.0)


def test_ap_per_class_classes_without_labels_not_scored():
    tp = np.array([[1], [0]], dtype=bool)
    p, r, ap, f1, uc = ap_per_class(tp, np.array([0.9, 0.8]), np.array([0, 5]), np.array([0]))
    assert uc.tolist() == [0] and ap.shape == (1, 1)


def test_ap_per_class_plots(tmp_path):
    dets, labels, nc = generated_case(1)
    stats = []
    for d, lb in zip(dets, labels):
        d, lb = torch.tensor(d).float().reshape(-1, 6), torch.tensor(lb).float().reshape(-1, 5)
        c, k = match_detections(d, lb)
        stats.append((c[k].numpy(), d[k, 4].numpy(), d[k, 5].numpy(), lb[:, 0].numpy()))
    tp, conf, pcls, tcls = (np.concatenate(x, 0) for x in zip(*stats))
    ap_per_class(tp, conf, pcls, tcls, plot=True, save_dir=tmp_path, names=["a", "b", "c", "d"])
    for f in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"):
        assert (tmp_path / f).stat().st_size > 1000


def test_fitness():
    x = np.array([[0.5, 0.5, 0.6, 0.4], [0, 0, 1.0, 1.0]])
    assert fitness(x) == pytest.approx([0.1 * 0.6 + 0.9 * 0.4, 1.0])


# --------------------------------------------------------------------------- confusion matrix
def test_confusion_matrix_counts(tmp_path):
    cm = ConfusionMatrix(nc=3, conf=0.25, iou_thres=0.45)
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [2, 50, 50, 60, 60]], dtype=torch.float32)
    dets = torch.tensor([[0, 0, 10, 10, 0.9, 0],      # correct class 0
                         [20, 20, 30, 30, 0.8, 2],    # class 1 predicted as 2
                         [80, 80, 90, 90, 0.7, 1],    # background FP
                         [50, 50, 60, 60, 0.1, 2]])   # below conf: label 2 missed
    cm.process_batch(dets, labels)
    m = cm.matrix
    assert m[0, 0] == 1 and m[2, 1] == 1 and m[1, 3] == 1 and m[3, 2] == 1
    assert m.sum() == 4
    cm.process_batch(None, labels[:1])  # image without detections: its label is missed
    assert cm.matrix[3, 0] == 1
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0, 0] and fp.tolist() == [0, 1, 1]
    cm.plot(save_dir=tmp_path, names=["a", "b", "c"])
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
