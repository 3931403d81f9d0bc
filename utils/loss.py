"""Detection losses: ``ComputeLoss`` (YOLOv5-style matching) and ``ComputeLossOTA`` (YOLOv7).

Both take raw train-mode outputs ``p`` (list of ``nl`` tensors (B, na, ny, nx, nc + 5)) and
``targets`` (N, 6) = ``[image_index, class, cx, cy, w, h]`` normalised to the network input,
and return ``(loss * batch_size, torch.cat((lbox, lobj, lcls, loss)).detach())`` as YOLOv7
does (``loss = lbox + lobj + lcls``; every term has shape (1,)).

Loss terms (YOLOv7): box = 1 - CIoU of positives; objectness = BCE against
``(1 - gr) + gr * IoU`` at positives and 0 elsewhere, levels weighted [4.0, 1.0, 0.4];
class = BCE against label-smoothed one-hot targets (``smooth_BCE``), optionally focal
(``hyp['fl_gamma'] > 0``); then scaled by ``hyp['box']``, ``hyp['obj']``, ``hyp['cls']``.

``ComputeLossOTA`` assigns positives with YOLOv7's SimOTA variant, computed for the whole
batch at once (YOLOv7 loops over images in Python): candidates are the centre cell plus its
two nearest neighbour cells for every anchor that passes ``hyp['anchor_t']``; for each
ground truth the sum of its top-10 IoUs with the image's candidates gives a dynamic k,
the k lowest-cost candidates (cost = class BCE + 3 * -log IoU) are taken, and a candidate
claimed by several ground truths goes to the image's ground truth with the lowest cost for
it (among all of them, claimant or not, as YOLOv7 and YOLOX do). By default this is YOLOv7's
assignment exactly, two quirks included (tests/fixtures/yolov7_ota.pt holds YOLOv7's own
outputs): a prediction near several ground truths is one candidate per ground truth, and
ground-truth x and width are scaled by the input height. ``hyp ota_fixes: 1`` makes each
prediction one candidate and scales by width and height (see :class:`ComputeLossOTA`).

Losses are computed in float32, or float64 when the model runs in float64; AMP's float16
outputs are lifted to float32.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.boxes import bbox_iou
from utils.torch_utils import de_parallel

Level = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

_OFFSETS = ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1))  # centre, left, up, right, down (x, y)


def loss_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the loss is computed in: float64 outputs stay float64, anything else (AMP's
    float16 / bfloat16) is lifted to float32."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def last_of_each_cell(b: torch.Tensor, a: torch.Tensor, gj: torch.Tensor, gi: torch.Tensor,
                      shape: Sequence[int]) -> torch.Tensor:
    """Mask of the positives that are the last listed for their (image, anchor, cell): where a cell
    is a positive twice, its objectness target is the last one's (YOLOv7's in-place write on the
    CPU), made deterministic on every device."""
    _, na, ny, nx = shape[:4]
    flat = ((b * na + a) * ny + gj) * nx + gi
    pos = torch.arange(flat.numel(), device=flat.device)
    last = torch.full((int(flat.max()) + 1,), -1, dtype=torch.long, device=flat.device)
    last.scatter_reduce_(0, flat, pos, reduce="amax")
    return last[flat] == pos


def smooth_BCE(eps: float = 0.1) -> tuple[float, float]:
    """Label-smoothing BCE targets (positive, negative) (https://arxiv.org/abs/1902.04103)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Focal loss wrapper around a BCE-with-logits loss (gamma modulation, alpha balance)."""

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # applied after modulation

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        prob = torch.sigmoid(pred)
        p_t = true * prob + (1 - true) * (1 - prob)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_factor * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model behind DDP / DataParallel wrappers."""
    try:
        model = de_parallel(model)
    except ImportError:
        pass
    return model.module if hasattr(model, "module") and not hasattr(model, "model") else model


class ComputeLoss:
    """YOLOv5-style loss: every (anchor, cell) near a ground truth whose shape fits is positive."""

    def __init__(self, model: nn.Module, autobalance: bool = False):
        m = _unwrap(model)
        self.model = m
        device = next(m.parameters()).device
        h = m.hyp
        self.hyp = h
        bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h.get("cls_pw", 1.0)], device=device))
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h.get("obj_pw", 1.0)], device=device))
        self.cp, self.cn = smooth_BCE(eps=h.get("label_smoothing", 0.0))
        g = h.get("fl_gamma", 0.0)
        if g > 0:
            bce_cls, bce_obj = FocalLoss(bce_cls, g), FocalLoss(bce_obj, g)
        self.BCEcls, self.BCEobj = bce_cls, bce_obj
        det = m.model[-1]
        self.det = det
        self.nc, self.nl, self.na = int(det.nc), int(det.nl), int(det.na)
        self.balance = list({3: [4.0, 1.0, 0.4]}.get(self.nl, [4.0, 1.0, 0.25, 0.06, 0.02]))
        self.autobalance = autobalance
        self.ssi = [int(s) for s in det.stride].index(16) if autobalance else 0

    # ------------------------------------------------------------------ shared pieces
    @property
    def gr(self) -> float:
        """IoU ratio for the objectness target (train.py sets ``model.gr``; YOLOv7 uses 1.0)."""
        return float(getattr(self.model, "gr", 1.0))

    def anchors(self, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Current anchors (nl, na, 2) in stride units (read each call: AutoAnchor edits them)."""
        return self.det.anchors.to(device=device, dtype=dtype)

    def find_positives(self, p: Sequence[torch.Tensor], targets: torch.Tensor) -> list[Level]:
        """Candidate positives per level: ``(b, a, gj, gi, t)`` with ``t`` the row in ``targets``.

        An anchor fits a ground truth when the width and height ratios are both within
        ``hyp['anchor_t']``; it is then used at the cell holding the centre and at the two
        neighbouring cells nearest to the centre (x and y, offset 0.5), as in YOLOv5/YOLOv7.
        Order: offset-major, then anchor, then target (YOLOv7's order).
        """
        device = targets.device
        nt = targets.shape[0]
        anchors_all = self.anchors(device, loss_dtype(self.det.anchors))
        off = torch.tensor(_OFFSETS, device=device, dtype=torch.float32) * 0.5
        anchor_t = float(self.hyp.get("anchor_t", 4.0))
        out: list[Level] = []
        for i in range(self.nl):
            ny, nx = p[i].shape[2], p[i].shape[3]
            gain = torch.tensor([nx, ny, nx, ny], device=device, dtype=torch.float32)
            if nt == 0:
                e = torch.zeros(0, dtype=torch.long, device=device)
                out.append((e, e, e, e, e))
                continue
            gxywh = targets[:, 2:6].float() * gain  # (nt, 4) grid units
            r = gxywh[None, :, 2:4] / anchors_all[i][:, None]  # (na, nt, 2)
            fit = torch.max(r, 1.0 / r).max(2)[0] < anchor_t
            a, t = fit.nonzero(as_tuple=True)
            gxy = gxywh[t, :2]
            gxi = gain[:2] - gxy
            lx, uy = ((gxy % 1.0 < 0.5) & (gxy > 1.0)).T
            rx, dy = ((gxi % 1.0 < 0.5) & (gxi > 1.0)).T
            sel = torch.stack((torch.ones_like(lx), lx, uy, rx, dy))  # (5, m)
            o, q = sel.nonzero(as_tuple=True)
            a, t = a[q], t[q]
            gij = (gxy[q] - off[o]).long()
            gi = gij[:, 0].clamp(0, nx - 1)
            gj = gij[:, 1].clamp(0, ny - 1)
            b = targets[t, 0].long()
            out.append((b, a, gj, gi, t))
        return out

    def _level_losses(self, p: Sequence[torch.Tensor], targets: torch.Tensor,
                      positives: Sequence[Level]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Box, objectness and class losses (each shape (1,)) for the given positives."""
        device, dtype = p[0].device, loss_dtype(p[0])
        anchors_all = self.anchors(device, dtype)
        lcls = torch.zeros(1, device=device, dtype=dtype)
        lbox = torch.zeros(1, device=device, dtype=dtype)
        lobj = torch.zeros(1, device=device, dtype=dtype)
        gr = self.gr
        for i, pi in enumerate(p):
            b, a, gj, gi, t = positives[i]
            tobj = torch.zeros(pi.shape[:4], device=device, dtype=dtype)
            n = b.shape[0]
            if n:
                ps = pi[b, a, gj, gi].to(dtype)
                pxy = ps[:, :2].sigmoid() * 2.0 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anchors_all[i][a]
                pbox = torch.cat((pxy, pwh), 1)
                ny, nx = pi.shape[2], pi.shape[3]
                gain = torch.tensor([nx, ny, nx, ny], device=device, dtype=torch.float32)
                tbox = targets[t, 2:6].float() * gain
                tbox[:, 0] -= gi
                tbox[:, 1] -= gj
                iou = bbox_iou(pbox, tbox, x1y1x2y2=False, CIoU=True)
                lbox = lbox + (1.0 - iou).mean()
                last = last_of_each_cell(b, a, gj, gi, pi.shape)
                tobj[b[last], a[last], gj[last], gi[last]] = (1.0 - gr) + gr * iou.detach()[last].clamp(0).to(dtype)
                if self.nc > 1:  # a one-class model has no class loss
                    tc = torch.full_like(ps[:, 5:], self.cn)
                    tc[torch.arange(n, device=device), targets[t, 1].long()] = self.cp
                    lcls = lcls + self.BCEcls(ps[:, 5:], tc)
            obji = self.BCEobj(pi[..., 4].to(dtype), tobj)
            lobj = lobj + obji * self.balance[i]
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / max(obji.detach().item(), 1e-12)
        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox = lbox * self.hyp["box"]
        lobj = lobj * self.hyp["obj"]
        lcls = lcls * self.hyp["cls"]
        return lbox, lobj, lcls

    def _check(self, p: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() != 2 or targets.shape[1] != 6:
            raise ValueError(f"loss: targets must be (N, 6) [image, class, cx, cy, w, h], "
                             f"got shape {tuple(targets.shape)}")
        if len(p) != self.nl or p[0].shape[-1] != self.nc + 5:
            raise ValueError(f"loss: expected {self.nl} outputs (B, na, ny, nx, {self.nc + 5}), "
                             f"got {[tuple(x.shape) for x in p]}")
        if targets.shape[0]:
            cmax, bmax = int(targets[:, 1].max()), int(targets[:, 0].max())
            if cmax >= self.nc or cmax < 0 or int(targets[:, 1].min()) < 0:
                raise ValueError(f"loss: label class {cmax} outside the model's {self.nc} classes")
            if bmax >= p[0].shape[0]:
                raise ValueError(f"loss: target image index {bmax} >= batch size {p[0].shape[0]}")
        return targets.to(p[0].device)

    def assign(self, p: Sequence[torch.Tensor], targets: torch.Tensor,
               imgs: Optional[torch.Tensor] = None) -> list[Level]:
        """Positives per level; the plain loss takes every candidate (``imgs`` is not needed)."""
        return self.find_positives(p, targets)

    def __call__(self, p: Sequence[torch.Tensor], targets: torch.Tensor,
                 imgs: Optional[torch.Tensor] = None):
        """``(loss * batch_size, [box, obj, cls, total])`` for the positives :meth:`assign` picks."""
        targets = self._check(p, targets)
        lbox, lobj, lcls = self._level_losses(p, targets, self.assign(p, targets, imgs))
        loss = lbox + lobj + lcls
        return loss * p[0].shape[0], torch.cat((lbox, lobj, lcls, loss)).detach()


class ComputeLossOTA(ComputeLoss):
    """YOLOv7's loss with its SimOTA-style dynamic-k assignment, batched over images.

    By default the assignment is YOLOv7's as written (tests compare it with YOLOv7's own outputs,
    tests/fixtures/yolov7_ota.pt): a prediction that is a candidate of several ground truths is
    one candidate column *per* ground truth, so it can be counted twice by one ground truth and
    assigned to two; and the ground-truth boxes are scaled to pixels by the input's height for
    both x and width (``imgs[i].shape[1]``), which is only right for square inputs. ``hyp
    ota_fixes: 1`` fixes both: one column per prediction (so one ground truth per prediction) and
    width/height scaling.
    """

    topk_iou = 10  # candidates whose IoUs are summed into dynamic k
    iou_weight = 3.0  # cost = class BCE + iou_weight * -log(IoU)

    def __init__(self, model: nn.Module, autobalance: bool = False):
        super().__init__(model, autobalance)
        self.fixes = bool(self.hyp.get("ota_fixes", 0))

    def assign(self, p: Sequence[torch.Tensor], targets: torch.Tensor,
               imgs: Optional[torch.Tensor] = None) -> list[Level]:
        """OTA positives (see :meth:`build_targets`)."""
        return self.build_targets(p, targets, imgs)

    @torch.no_grad()
    def build_targets(self, p: Sequence[torch.Tensor], targets: torch.Tensor,
                      imgs: Optional[torch.Tensor] = None) -> list[Level]:
        """OTA positives per level: ``(b, a, gj, gi, t)``, ``t`` = matched row of ``targets``, in
        YOLOv7's order (image, then candidate column).

        ``imgs`` (B, 3, H, W) only supplies the input size (else it is taken from the first
        level's grid and stride).
        """
        device = p[0].device
        empty = torch.zeros(0, dtype=torch.long, device=device)
        if targets.shape[0] == 0:
            return [(empty, empty, empty, empty, empty) for _ in range(self.nl)]
        cand = self._candidates(p, targets)
        if cand is None:
            return [(empty, empty, empty, empty, empty) for _ in range(self.nl)]
        strides = [float(s) for s in self.det.stride]
        if imgs is not None:
            img_hw = (imgs.shape[-2], imgs.shape[-1])
        else:
            img_hw = (p[0].shape[2] * strides[0], p[0].shape[3] * strides[0])
        dense = self._dense(cand, *self._decode(p, cand, strides), p[0].shape[0])
        iou, cost = self._cost(targets, dense, img_hw)
        win = self._match(targets, iou, cost, dense["valid"], p[0].shape[0])
        return self._to_levels(targets, win, cand, dense["starts"])

    def _candidates(self, p: Sequence[torch.Tensor], targets: torch.Tensor) -> Optional[dict]:
        """Candidate columns grouped by image: per image level by level, each in :meth:`find_positives`'
        order (YOLOv7's columns); with ``ota_fixes`` one column per (image, level, anchor, cell)."""
        device = p[0].device
        cand = self.find_positives(p, targets)
        cols = {name: torch.cat([c[j] for c in cand]) for j, name in enumerate(("b", "a", "gj", "gi"))}
        cols["lvl"] = torch.cat([torch.full_like(c[0], i) for i, c in enumerate(cand)])
        if cols["b"].numel() == 0:
            return None
        if not self.fixes:
            order = torch.sort(cols["b"], stable=True).indices
            return {k: v[order] for k, v in cols.items()}
        sizes = [self.na * pi.shape[2] * pi.shape[3] for pi in p]
        level_base = torch.tensor([sum(sizes[:i]) for i in range(self.nl)], device=device)
        nx = torch.tensor([pi.shape[3] for pi in p], device=device)[cols["lvl"]]
        ny = torch.tensor([pi.shape[2] for pi in p], device=device)[cols["lvl"]]
        ids = cols["b"] * sum(sizes) + level_base[cols["lvl"]] + (cols["a"] * ny + cols["gj"]) * nx + cols["gi"]
        uid, inv = torch.unique(ids, sorted=True, return_inverse=True)  # sorted: grouped by image
        rep = torch.empty(uid.numel(), dtype=torch.long, device=device)
        rep.scatter_(0, inv, torch.arange(inv.numel(), device=device))  # any member: same prediction
        return {k: v[rep] for k, v in cols.items()}

    def _decode(self, p: Sequence[torch.Tensor], cand: dict, strides: Sequence[float]):
        """The candidates' boxes (pixels, xyxy) and the logs of their class scores
        ``y = sqrt(sigmoid(cls) * sigmoid(obj))`` (YOLOv7) and of ``1 - y``."""
        device, dtype = p[0].device, loss_dtype(p[0])
        nu = cand["b"].numel()
        anchors_all = self.anchors(device, dtype)
        pbox = torch.zeros(nu, 4, device=device, dtype=dtype)
        log_y = torch.zeros(nu, self.nc, device=device, dtype=dtype)
        b_u, a_u, gj_u, gi_u = cand["b"], cand["a"], cand["gj"], cand["gi"]
        for i in range(self.nl):
            m = cand["lvl"] == i
            if not bool(m.any()):
                continue
            fg = p[i][b_u[m], a_u[m], gj_u[m], gi_u[m]].to(dtype)
            grid = torch.stack((gi_u[m], gj_u[m]), 1).to(dtype)
            pxy = (fg[:, :2].sigmoid() * 2.0 - 0.5 + grid) * strides[i]
            pwh = (fg[:, 2:4].sigmoid() * 2) ** 2 * anchors_all[i][a_u[m]] * strides[i]
            pbox[m] = torch.cat((pxy - pwh / 2, pxy + pwh / 2), 1)
            log_y[m] = 0.5 * (F.logsigmoid(fg[:, 5:]) + F.logsigmoid(fg[:, 4:5]))
        return pbox, log_y, torch.log1p(-log_y.exp())

    def _dense(self, cand: dict, pbox: torch.Tensor, log_y: torch.Tensor, log_1my: torch.Tensor, bs: int) -> dict:
        """Dense (image, column) layout of the candidates: boxes and the log terms of the class cost."""
        device, dtype = pbox.device, pbox.dtype
        b_u = cand["b"]
        counts = torch.bincount(b_u, minlength=bs)
        starts = torch.cumsum(counts, 0) - counts
        col = torch.arange(b_u.numel(), device=device) - starts[b_u]
        ncol = int(counts.max())
        valid = torch.zeros(bs, ncol, dtype=torch.bool, device=device)
        valid[b_u, col] = True
        box_d = torch.zeros(bs, ncol, 4, device=device, dtype=dtype)
        box_d[b_u, col] = pbox
        # BCE(y, one_hot(c)) summed over classes = sum_k -log(1 - y_k) + (-log y_c + log(1 - y_c)):
        # no (ground truth, column, class) tensor is needed
        neg_sum = torch.zeros(bs, ncol, device=device, dtype=dtype)
        neg_sum[b_u, col] = -log_1my.sum(1)
        logy_d = torch.zeros(bs, ncol, self.nc, device=device, dtype=dtype)
        logy_d[b_u, col] = log_y
        log1my_d = torch.zeros(bs, ncol, self.nc, device=device, dtype=dtype)
        log1my_d[b_u, col] = log_1my
        return {"starts": starts, "valid": valid, "box": box_d, "neg_sum": neg_sum, "logy": logy_d,
                "log1my": log1my_d}

    def _cost(self, targets: torch.Tensor, dense: dict, img_hw: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """IoU and cost (class BCE + iou_weight * -log IoU) of every ground truth against its image's columns."""
        device, dtype = targets.device, dense["box"].dtype
        tb, tc = targets[:, 0].long(), targets[:, 1].long()
        img_h, img_w = img_hw
        sx = img_w if self.fixes else img_h  # YOLOv7 scales x and width by the height too
        gain = torch.tensor([sx, img_h, sx, img_h], device=device, dtype=dtype)
        txywh = targets[:, 2:6].to(dtype) * gain
        txyxy = torch.cat((txywh[:, :2] - txywh[:, 2:] / 2, txywh[:, :2] + txywh[:, 2:] / 2), 1)[:, None]
        box = dense["box"][tb]  # (nt, ncol, 4)
        inter = ((torch.min(txyxy[..., 2:], box[..., 2:]) - torch.max(txyxy[..., :2], box[..., :2]))
                 .clamp(0).prod(-1))
        area_t = (txyxy[..., 2:] - txyxy[..., :2]).prod(-1)
        area_p = (box[..., 2:] - box[..., :2]).prod(-1)
        vrow = dense["valid"][tb]
        iou = (inter / (area_t + area_p - inter)) * vrow  # exact IoU, as YOLOv7's box_iou
        cols = torch.arange(vrow.shape[1], device=device)[None]
        cls_cost = (dense["neg_sum"][tb] - dense["logy"][tb[:, None], cols, tc[:, None]]
                    + dense["log1my"][tb[:, None], cols, tc[:, None]])
        cost = cls_cost + self.iou_weight * -torch.log(iou + 1e-8)
        return iou, cost.masked_fill(~vrow, float("inf"))

    def _match(self, targets: torch.Tensor, iou: torch.Tensor, cost: torch.Tensor, valid: torch.Tensor,
               bs: int) -> torch.Tensor:
        """(nt, ncol) winners: each ground truth's dynamic-k cheapest columns (``ota_fixes``: ties to the first);
        a column claimed by several goes to the image's ground truth with the lowest cost for it,
        claimant or not (YOLOv7 / YOLOX SimOTA; ties -> first row)."""
        device = cost.device
        nt, ncol = cost.shape
        tb = targets[:, 0].long()
        vrow = valid[tb]
        kk = min(self.topk_iou, ncol)
        dynamic_k = iou.topk(kk, dim=1).values.sum(1).int().clamp(min=1)
        match = torch.zeros(nt, ncol, dtype=torch.bool, device=device)
        if self.fixes:
            order = torch.sort(cost, dim=1, stable=True).indices[:, :kk]  # (nt, kk)
            match.scatter_(1, order, torch.arange(kk, device=device)[None] < dynamic_k[:, None])
        else:
            # YOLOv7 takes each ground truth's k cheapest with torch.topk on its image's columns; a
            # prediction listed twice has equal costs, and which copy topk keeps decides later claims,
            # so the same call on the same row is made here (its tie order is torch's, per device)
            ncols = vrow.sum(1).tolist()
            for r, (k, n) in enumerate(zip(dynamic_k.tolist(), ncols)):
                if n:
                    match[r, torch.topk(cost[r, :n], min(k, n), largest=False).indices] = True
        match &= vrow
        tbx = tb[:, None].expand(nt, ncol)
        claims = torch.zeros(bs, ncol, device=device).index_add_(0, tb, match.float())
        contested = (claims > 1)[tb]
        col_min = torch.full((bs, ncol), float("inf"), device=device, dtype=cost.dtype)
        col_min.scatter_reduce_(0, tbx, cost, reduce="amin")
        rows = torch.arange(nt, device=device)[:, None].expand(nt, ncol)
        first = torch.full((bs, ncol), nt, dtype=torch.long, device=device)
        first.scatter_reduce_(0, tbx, torch.where(cost == col_min[tb], rows, torch.full_like(rows, nt)),
                              reduce="amin")
        return torch.where(contested, rows == first[tb], match)

    def _to_levels(self, targets: torch.Tensor, win: torch.Tensor, cand: dict, starts: torch.Tensor) -> list[Level]:
        """Winners back to per-level ``(b, a, gj, gi, t)``, ordered by column as YOLOv7 lists them."""
        tb = targets[:, 0].long()
        t_idx, c_idx = win.nonzero(as_tuple=True)
        u_idx = starts[tb[t_idx]] + c_idx  # the column's index in ``cand``: image-major, column order
        u_idx, order = torch.sort(u_idx)
        t_idx = t_idx[order]
        lv = cand["lvl"][u_idx]
        out: list[Level] = []
        for i in range(self.nl):
            m = lv == i
            u = u_idx[m]
            out.append((cand["b"][u], cand["a"][u], cand["gj"][u], cand["gi"][u], t_idx[m]))
        return out
