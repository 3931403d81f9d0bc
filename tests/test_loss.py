"""Tests for utils/loss.py: values, hand-checked OTA assignment, batched OTA vs a per-image reference."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ota_reference import per_image_ota

from utils.loss import ComputeLoss, ComputeLossOTA, FocalLoss, smooth_BCE

HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0,
       "fl_gamma": 0.0, "label_smoothing": 0.0}
# YOLOv7's default anchors (pixels) divided by the strides 8, 16, 32
ANCHORS_PX = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
STRIDES = (8.0, 16.0, 32.0)


class FakeDetect(nn.Module):
    """Just the Detect attributes the losses read (docs/DESIGN.md), plus per-level 1x1 heads."""

    def __init__(self, nc: int, anchors_px, strides=STRIDES, ch: int = 8):
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, len(anchors_px), len(anchors_px[0]) // 2
        self.register_buffer("stride", torch.tensor(strides))
        a = torch.tensor(anchors_px, dtype=torch.float32).view(self.nl, self.na, 2)
        self.register_buffer("anchors", a / self.stride.view(-1, 1, 1))
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, self.na, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(ch, self.no * self.na, 1) for _ in range(self.nl))

    def forward(self, feats):
        out = []
        for i, x in enumerate(feats):
            y = self.m[i](x)
            b, _, ny, nx = y.shape
            out.append(y.view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return out


class FakeModel(nn.Module):
    """Tiny trainable detector with the Model interface the losses use (model[-1], hyp, gr)."""

    def __init__(self, nc: int = 3, anchors_px=ANCHORS_PX, ch: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, ch, 3, 1, 1), nn.SiLU())
        self.model = nn.Sequential(self.stem, FakeDetect(nc, anchors_px, ch=ch))
        self.hyp = dict(HYP)
        self.gr = 1.0

    def forward(self, x):
        f = self.stem(x)
        det = self.model[-1]
        return det([F.avg_pool2d(f, int(s)) for s in det.stride])


def random_preds(bs, nc, shape_hw, na=3, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, na, shape_hw[0] // int(s), shape_hw[1] // int(s), nc + 5, generator=g) * scale
            for s in STRIDES]


def random_targets(counts, nc, seed=0, wh_range=(0.05, 0.6)):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b, n in enumerate(counts):
        for _ in range(n):
            wh = torch.rand(2, generator=g) * (wh_range[1] - wh_range[0]) + wh_range[0]
            xy = wh / 2 + torch.rand(2, generator=g) * (1 - wh)
            c = torch.randint(0, nc, (1,), generator=g).float()
            rows.append(torch.cat((torch.tensor([float(b)]), c, xy, wh)))
    return torch.stack(rows) if rows else torch.zeros(0, 6)


# ----------------------------------------------------------------------------- reference
def reference_candidates(targets, anchors, grids, anchor_t):
    """Candidates per level as ``(b, a, gj, gi)`` tensors, by a plain loop over ground truths and anchors:
    the centre cell and the two neighbouring cells nearest to the centre, for anchors whose shape fits."""
    out = []
    for i, (ny, nx) in enumerate(grids):
        found = []
        for n in range(targets.shape[0]):
            gx, gy = float(targets[n, 2]) * nx, float(targets[n, 3]) * ny
            gw, gh = float(targets[n, 4]) * nx, float(targets[n, 5]) * ny
            for a in range(anchors.shape[1]):
                rw, rh = gw / float(anchors[i, a, 0]), gh / float(anchors[i, a, 1])
                if max(rw, 1 / rw, rh, 1 / rh) >= anchor_t:
                    continue
                offs = [(0.0, 0.0)]
                if gx % 1 < 0.5 and gx > 1:
                    offs.append((0.5, 0.0))
                if gy % 1 < 0.5 and gy > 1:
                    offs.append((0.0, 0.5))
                if (nx - gx) % 1 < 0.5 and nx - gx > 1:
                    offs.append((-0.5, 0.0))
                if (ny - gy) % 1 < 0.5 and ny - gy > 1:
                    offs.append((0.0, -0.5))
                for ox, oy in offs:
                    gi = min(max(int(gx - ox), 0), nx - 1)
                    gj = min(max(int(gy - oy), 0), ny - 1)
                    found.append((int(targets[n, 0]), a, gj, gi))
        out.append(tuple(torch.tensor([f[k] for f in found], dtype=torch.long) for k in range(4)))
    return out


def reference_ota(p, targets, anchors, strides, anchor_t, img_hw, nc, stats=None):
    """Per-image OTA (tests/ota_reference.py) on candidates found by an independent loop.

    Returns a set of (level, image, anchor, gj, gi, target_row). ``stats`` (dict) counts
    contested predictions and those won by a ground truth that had not claimed them.
    """
    cand = reference_candidates(targets, anchors, [pi.shape[2:4] for pi in p], anchor_t)
    return per_image_ota(p, targets, cand, anchors, strides, img_hw, nc, stats)


def as_set(levels):
    return {(i, int(b), int(a), int(gj), int(gi), int(t))
            for i, lv in enumerate(levels) for b, a, gj, gi, t in zip(*lv)}


def fixed_ota(model: nn.Module) -> ComputeLossOTA:
    """The OTA loss with ``ota_fixes: 1`` (one column per prediction, width/height scaling), whose
    assignment the per-image reference (tests/ota_reference.py) and the hand cases describe."""
    model.hyp = dict(model.hyp, ota_fixes=1)
    return ComputeLossOTA(model)


# ----------------------------------------------------------------------------- tests
def test_smooth_bce_and_focal():
    assert smooth_BCE(0.0) == (1.0, 0.0)
    assert smooth_BCE(0.1) == pytest.approx((0.95, 0.05))
    pred = torch.tensor([3.0, -3.0, 0.0])
    true = torch.tensor([1.0, 0.0, 1.0])
    bce = nn.BCEWithLogitsLoss(reduction="none")(pred, true)
    fl = FocalLoss(nn.BCEWithLogitsLoss(), gamma=2.0, alpha=0.25)
    p = torch.sigmoid(pred)
    p_t = true * p + (1 - true) * (1 - p)
    expect = (bce * (true * 0.25 + (1 - true) * 0.75) * (1 - p_t) ** 2).mean()
    assert torch.allclose(fl(pred, true), expect)
    assert fl(pred, true) < bce.mean()  # easy examples are down-weighted


def hand_case():
    """Two 32x32 px ground truths in one 64x64 image that compete for cell (3, 3) of level 0.

    Only level 0, anchor 0 (32x32 px) fits them: every other anchor is >= 4x off.
    Every prediction has logits 0 (so its box is the 32x32 anchor centred on its cell, at
    ((gi + 0.5) * 8, (gj + 0.5) * 8)), except that cell (3, 3) says class 0 with logit 2.
    """
    anchors_px = [[32, 32, 200, 200, 200, 200], [300, 300, 300, 300, 300, 300],
                  [400, 400, 400, 400, 400, 400]]
    model = FakeModel(nc=2, anchors_px=anchors_px)
    p = [torch.zeros(1, 3, 64 // int(s), 64 // int(s), 7) for s in STRIDES]
    p[0][0, 0, 3, 3, 5] = 2.0
    # A: class 0 at (26, 29) px -> grid (3.25, 3.625): centre (3,3), left (2,3), down (3,4)
    # B: class 1 at (30, 27) px -> grid (3.75, 3.375): centre (3,3), right (4,3), up (3,2)
    targets = torch.tensor([[0, 0, 26 / 64, 29 / 64, 0.5, 0.5],
                            [0, 1, 30 / 64, 27 / 64, 0.5, 0.5]])
    return model, p, targets


def shifted_iou(dx, dy, size=32.0):
    """IoU of two size x size squares whose centres differ by (dx, dy)."""
    inter = (size - abs(dx)) * (size - abs(dy))
    return inter / (2 * size * size - inter)


def test_yolov5_matching_hand_case():
    model, p, targets = hand_case()
    got = as_set(ComputeLoss(model).find_positives(p, targets))
    assert got == {(0, 0, 0, 3, 3, 0), (0, 0, 0, 3, 2, 0), (0, 0, 0, 4, 3, 0),
                   (0, 0, 0, 3, 3, 1), (0, 0, 0, 3, 4, 1), (0, 0, 0, 2, 3, 1)}


def test_ota_hand_case():
    model, p, targets = hand_case()
    # candidate cells (gi, gj) -> predicted box centre in pixels
    cells = {(3, 3): (28, 28), (2, 3): (20, 28), (3, 4): (28, 36), (4, 3): (36, 28), (3, 2): (28, 20)}
    centres = {"A": (26, 29), "B": (30, 27)}
    ious = {g: {c: shifted_iou(cx - px, cy - py) for c, (px, py) in cells.items()}
            for g, (cx, cy) in centres.items()}
    # dynamic k = int(sum of the (at most 10) largest IoUs) = 3 for both
    assert int(sum(ious["A"].values())) == 3 and int(sum(ious["B"].values())) == 3
    # class costs are equal everywhere except cell (3, 3), where class 0 is likely: cheaper
    # for A (class 0), dearer for B (class 1); both still rank (3, 3) first, so both claim it
    # and it goes to A. A keeps its 3 best-IoU cells, B its 2nd and 3rd.
    rank_a = sorted(cells, key=lambda c: -ious["A"][c])[:3]
    rank_b = sorted(cells, key=lambda c: -ious["B"][c])[:3]
    assert rank_a == [(3, 3), (2, 3), (3, 4)] and rank_b == [(3, 3), (4, 3), (3, 2)]
    expect = {(0, 0, 0, gj, gi, 0) for gi, gj in rank_a} | {(0, 0, 0, gj, gi, 1) for gi, gj in rank_b[1:]}
    got = as_set(fixed_ota(model).build_targets(p, targets, torch.zeros(1, 3, 64, 64)))
    assert got == expect
    # B keeps (3, 3) when A's class is made unlikely there and B's likely
    p[0][0, 0, 3, 3, 5] = -2.0
    p[0][0, 0, 3, 3, 6] = 2.0
    got = as_set(fixed_ota(model).build_targets(p, targets, torch.zeros(1, 3, 64, 64)))
    assert got == {(0, 0, 0, gj, gi, 0) for gi, gj in rank_a[1:]} | {(0, 0, 0, gj, gi, 1) for gi, gj in rank_b}


def test_ota_yolov7_lists_a_shared_prediction_once_per_ground_truth():
    """YOLOv7's own behaviour (the default): cell (3, 3) is a candidate column of A and one of B,
    with equal costs; A's three cheapest are both copies and (2, 3), B's are both copies and
    (4, 3); the copies are contested and go to A. So A counts (3, 3) twice and B keeps one
    positive, where ``ota_fixes`` gives A three cells and B two."""
    model, p, targets = hand_case()
    levels = ComputeLossOTA(model).build_targets(p, targets, torch.zeros(1, 3, 64, 64))
    rows = [tuple(int(v) for v in x) for x in zip(*levels[0])]  # (b, a, gj, gi, target)
    assert sorted(rows) == [(0, 0, 3, 2, 0), (0, 0, 3, 3, 0), (0, 0, 3, 3, 0), (0, 0, 3, 4, 1)]
    assert not any(len(lv[0]) for lv in levels[1:])


def test_ota_box_scale_on_rectangular_inputs():
    """YOLOv7 scales a ground truth's x and width to pixels by the input *height* (``imgs[i].shape[1]``);
    ``ota_fixes`` by the width. A 64x128 input, one ground truth (cx 0.5, w 0.5, cy 0.5, h 0.5) and one
    candidate box exactly on it in pixels (x 32..96, y 16..48): IoU 1 with the fix; YOLOv7 sees the
    ground truth at x 16..48 (IoU 1/5)."""
    targets = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.5, 0.5]])
    dense = {"box": torch.tensor([[[32.0, 16.0, 96.0, 48.0]]]), "valid": torch.ones(1, 1, dtype=torch.bool),
             "neg_sum": torch.zeros(1, 1), "logy": torch.zeros(1, 1, 3), "log1my": torch.zeros(1, 1, 3)}
    iou7, _ = ComputeLossOTA(FakeModel(nc=3))._cost(targets, dense, (64, 128))
    iou_fixed, _ = fixed_ota(FakeModel(nc=3))._cost(targets, dense, (64, 128))
    assert float(iou_fixed) == pytest.approx(1.0) and float(iou7) == pytest.approx(0.2)  # 16x32 / (2048 + 1024 - 512)
    square = (128, 128)
    dense["box"] = torch.tensor([[[32.0, 32.0, 96.0, 96.0]]])
    assert float(ComputeLossOTA(FakeModel(nc=3))._cost(targets, dense, square)[0]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(6))
def test_ota_batched_equals_reference(seed):
    nc = 4
    counts = [[5, 0, 3], [1, 12, 2], [0, 0, 7], [20, 1, 0], [3, 3, 3], [8, 2, 6]][seed]
    img_hw = (64, 96) if seed % 2 else (96, 96)
    model = FakeModel(nc=nc)
    p = random_preds(len(counts), nc, img_hw, seed=seed)
    targets = random_targets(counts, nc, seed=100 + seed)
    if seed == 4:  # duplicated ground truth: ties resolve to the first row
        targets = torch.cat((targets, targets[:1]))
    loss_fn = fixed_ota(model)
    got = as_set(loss_fn.build_targets(p, targets, torch.zeros(len(counts), 3, *img_hw)))
    ref = reference_ota(p, targets, loss_fn.det.anchors, STRIDES, HYP["anchor_t"], img_hw, nc)
    assert got == ref
    assert len(got) > 0
    # at most one ground truth per prediction
    keys = [g[:5] for g in got]
    assert len(keys) == len(set(keys))


def crowded_targets(n, nc, seed):
    """n overlapping boxes around the image centre (one image): many contested predictions."""
    g = torch.Generator().manual_seed(seed)
    wh = torch.rand(n, 2, generator=g) * 0.15 + 0.1
    xy = 0.4 + torch.rand(n, 2, generator=g) * 0.2
    c = torch.randint(0, nc, (n, 1), generator=g).float()
    return torch.cat((torch.zeros(n, 1), c, xy, wh), 1)


def test_ota_crowded_equals_reference():
    """Contested predictions, including ones won by a ground truth that never claimed them
    (YOLOv7 / YOLOX give a contested prediction to the lowest-cost ground truth of the image)."""
    stats = {"contested": 0, "outsider": 0}
    loss_fn = fixed_ota(FakeModel(nc=2))
    for seed in range(5):
        p = random_preds(1, 2, (96, 96), seed=seed)
        targets = crowded_targets(12, 2, seed)
        got = as_set(loss_fn.build_targets(p, targets, torch.zeros(1, 3, 96, 96)))
        assert got == reference_ota(p, targets, loss_fn.det.anchors, STRIDES, 4.0, (96, 96), 2, stats)
    assert stats["contested"] > 10 and stats["outsider"] > 0, stats


@pytest.mark.parametrize("cls", [ComputeLoss, ComputeLossOTA])
def test_empty_batch(cls):
    torch.manual_seed(0)
    model = FakeModel(nc=3)
    imgs = torch.rand(2, 3, 64, 64)
    p = model(imgs)
    args = (imgs,) if cls is ComputeLossOTA else ()
    loss, items = cls(model)(p, torch.zeros(0, 6), *args)
    assert loss.shape == (1,) and torch.isfinite(loss).all()
    assert items.shape == (4,) and torch.allclose(items[:3].sum(), items[3])
    assert items[0] == 0 and items[2] == 0 and items[1] > 0
    loss.backward()
    # only objectness gets a gradient, pushing every objectness logit down
    w = model.model[-1].m[0]
    assert w.bias.grad is not None and torch.isfinite(w.bias.grad).all()
    # obj loss tends to 0 as objectness logits go to -inf
    p_low = [x.detach().clone() for x in p]
    for x in p_low:
        x[..., 4] = -20.0
    _, items_low = cls(model)(p_low, torch.zeros(0, 6), *args)
    assert items_low[1] < 1e-6


@pytest.fixture(scope="module")
def tiny_ms0():
    from models.yolo import Model
    torch.manual_seed(0)
    model = Model("cfg/training/yolov7-tiny-ms0.yaml", nc=3)
    model.hyp = dict(HYP)
    model.gr = 1.0
    return model


@pytest.mark.parametrize("cls", [ComputeLoss, ComputeLossOTA])
def test_loss_finite_and_decreasing(cls, tiny_ms0):
    """A few Adam steps of the real yolov7-tiny-ms0 on one tiny batch lower the loss."""
    import copy
    torch.manual_seed(0)
    model = copy.deepcopy(tiny_ms0).train()
    imgs = torch.rand(2, 3, 128, 128)
    targets = random_targets([2, 3], 3, seed=1, wh_range=(0.1, 0.5))
    loss_fn = cls(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        p = model(imgs)
        loss, items = loss_fn(p, targets, imgs) if cls is ComputeLossOTA else loss_fn(p, targets)
        assert torch.isfinite(loss).all() and torch.isfinite(items).all()
        assert items.shape == (4,) and (items > 0).all()
        assert torch.allclose(loss.detach() / imgs.shape[0], items[3])
        assert torch.allclose(items[:3].sum(), items[3])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # OTA re-assigns positives every step, so single steps can go up; the trend must not
    assert min(losses[-2:]) < 0.8 * losses[0], losses


def test_hyp_scaling_label_smoothing_and_focal():
    torch.manual_seed(0)
    model = FakeModel(nc=3)
    p = random_preds(2, 3, (64, 64))
    targets = random_targets([3, 2], 3, seed=3)
    base = ComputeLoss(model)(p, targets)[1]
    model.hyp = dict(HYP, box=0.1, obj=2.0, cls=1.0)
    assert torch.allclose(ComputeLoss(model)(p, targets)[1], base * 2)  # every term doubled
    model.hyp = dict(HYP, label_smoothing=0.2)
    smoothed = ComputeLoss(model)(p, targets)[1]
    assert torch.allclose(smoothed[:2], base[:2]) and not torch.isclose(smoothed[2], base[2])
    model.hyp = dict(HYP, fl_gamma=1.5)
    focal = ComputeLoss(model)(p, targets)[1]
    assert focal[1] < base[1] and focal[2] < base[2]


def test_single_class_has_no_class_loss_and_gr():
    model = FakeModel(nc=1)
    p = random_preds(1, 1, (64, 64))
    targets = random_targets([3], 1, seed=5)
    for cls in (ComputeLoss, ComputeLossOTA):
        assert cls(model)(p, targets)[1][2] == 0
    # gr = 0: objectness target is 1 at positives regardless of IoU -> different obj loss
    a = ComputeLoss(model)(p, targets)[1][1]
    model.gr = 0.0
    b = ComputeLoss(model)(p, targets)[1][1]
    assert not torch.isclose(a, b)


def test_wrapped_model_and_targets_check():
    model = FakeModel(nc=3)

    p = random_preds(1, 3, (64, 64))
    targets = random_targets([2], 3)
    a = ComputeLossOTA(nn.DataParallel(model))(p, targets)[0]
    b = ComputeLossOTA(model)(p, targets)[0]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="targets"):
        ComputeLoss(model)(p, torch.zeros(3, 5))
    bad = targets.clone()
    bad[0, 1] = 3  # model has classes 0..2
    with pytest.raises(ValueError, match="class 3"):
        ComputeLossOTA(model)(p, bad)
    bad = targets.clone()
    bad[0, 0] = 1  # batch of one image
    with pytest.raises(ValueError, match="image index"):
        ComputeLoss(model)(p, bad)


def test_anchor_edits_are_seen():
    """AutoAnchor rewrites det.anchors in place after the loss exists; the loss must use them."""
    model = FakeModel(nc=3)
    p = random_preds(1, 3, (64, 64))
    targets = random_targets([3], 3, seed=2)
    loss_fn = ComputeLoss(model)
    before = as_set(loss_fn.find_positives(p, targets))
    model.model[-1].anchors[:] = 1000.0  # nothing fits any more
    assert before and not as_set(loss_fn.find_positives(p, targets))
    assert math.isfinite(float(loss_fn(p, targets)[0]))
    ota = ComputeLossOTA(model)  # no candidate anywhere: no positives, finite loss
    assert not as_set(ota.build_targets(p, targets))
    loss, items = ota(p, targets)
    assert torch.isfinite(loss).all() and items[0] == 0 and items[2] == 0


def test_half_precision_predictions():
    """AMP hands the loss float16 outputs: same assignment, finite float32 loss."""
    model = FakeModel(nc=3)
    p = random_preds(2, 3, (64, 64), seed=7)
    targets = random_targets([4, 3], 3, seed=7)
    loss_fn = ComputeLossOTA(model)
    p16 = [x.half() for x in p]
    p_round = [x.float() for x in p16]
    assert as_set(loss_fn.build_targets(p16, targets)) == as_set(loss_fn.build_targets(p_round, targets))
    loss, items = loss_fn(p16, targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    assert torch.allclose(items, loss_fn(p_round, targets)[1], rtol=1e-5)


# ----------------------------------------------------------------------------- against YOLOv7 itself
OTA_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "yolov7_ota.pt"


class HeldDetect(nn.Module):
    """A Detect's loss-facing attributes, from a fixture case."""

    def __init__(self, case: dict):
        super().__init__()
        self.nl, self.na = case["anchors"].shape[:2]
        self.nc, self.no = case["nc"], case["nc"] + 5
        self.register_buffer("anchors", case["anchors"].double())
        self.register_buffer("stride", case["stride"].double())
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))


class HeldModel(nn.Module):
    def __init__(self, case: dict):
        super().__init__()
        self.model = nn.Sequential(HeldDetect(case))
        self.hyp, self.gr = dict(case["hyp"]), 1.0


def fixture_inputs(case: dict) -> list[torch.Tensor]:
    """The case's float64 head outputs: objectness everywhere, full vectors at the candidate cells, else 0."""
    p = []
    for lv in case["levels"]:
        x = torch.zeros(lv["shape"], dtype=torch.float64)
        x[..., 4] = lv["obj"].double()
        x[tuple(lv["cells"].T)] = lv["cell_values"].double()
        p.append(x.requires_grad_(True))
    return p


def _ota_cases() -> dict:
    return torch.load(OTA_FIXTURE, weights_only=True) if OTA_FIXTURE.exists() else {}


@pytest.mark.parametrize("name", list(_ota_cases()))
def test_ota_equals_yolov7(name):
    """Loss, loss items, gradient with respect to every head output and the positives (per level, in
    order) equal those of YOLOv7's own ComputeLossOTA (tests/fixtures/make_ota_fixture.py ran it).
    YOLOv7 sums each term into a float32 zeros(1), so its float64 run agrees to float32 rounding."""
    case = _ota_cases()[name]
    p = fixture_inputs(case)
    loss_fn = ComputeLossOTA(HeldModel(case))
    imgs = torch.zeros(case["img_shape"], dtype=torch.float64)
    loss, items = loss_fn(p, case["targets"], imgs)
    positives = loss_fn.build_targets([x.detach() for x in p], case["targets"], imgs)
    for i, lv in enumerate(case["levels"]):
        got = torch.stack(positives[i][:4], 1) if len(positives[i][0]) else torch.zeros(0, 4, dtype=torch.long)
        assert got.tolist() == lv["positives"].tolist(), f"level {i}: positives differ"
    torch.testing.assert_close(items.double(), case["items"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(loss.detach().double().reshape(-1), case["loss"], rtol=1e-6, atol=1e-9)
    loss.sum().backward()
    for i, (x, lv) in enumerate(zip(p, case["levels"])):
        scale = max(float(lv["grad_obj"].abs().max()), float(lv["grad_cells"].abs().amax()) if lv["grad_cells"].numel()
                    else 0.0, 1e-12)
        torch.testing.assert_close(x.grad[..., 4].float(), lv["grad_obj"], rtol=0, atol=2e-6 * scale,
                                   msg=lambda m, i=i: f"level {i} objectness gradient: {m}")
        torch.testing.assert_close(x.grad[tuple(lv["cells"].T)].float(), lv["grad_cells"], rtol=0,
                                   atol=2e-6 * scale, msg=lambda m, i=i: f"level {i} cell gradient: {m}")


def test_ota_fixture_is_present():
    assert OTA_FIXTURE.exists() and len(_ota_cases()) >= 6, "tests/fixtures/yolov7_ota.pt is missing"
