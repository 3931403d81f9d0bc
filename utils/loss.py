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
the k lowest-cost candidates (cost = class BCE + 3 * -log IoU) are taken, and a prediction
claimed by several ground truths goes to the image's ground truth with the lowest cost for
it (among all of them, claimant or not, as YOLOv7 and YOLOX do). Each prediction
(level, image, anchor, cell) is one candidate even when it is near several ground truths,
so "one ground truth per prediction" holds exactly.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from utils.general import bbox_iou

Level = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

_OFFSETS = ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1))  # centre, left, up, right, down (x, y)


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
        from utils.torch_utils import de_parallel
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

    def anchors(self, device: torch.device) -> torch.Tensor:
        """Current anchors (nl, na, 2) in stride units (read each call: AutoAnchor edits them)."""
        return self.det.anchors.to(device=device, dtype=torch.float32)

    def find_positives(self, p: Sequence[torch.Tensor], targets: torch.Tensor) -> list[Level]:
        """Candidate positives per level: ``(b, a, gj, gi, t)`` with ``t`` the row in ``targets``.

        An anchor fits a ground truth when the width and height ratios are both within
        ``hyp['anchor_t']``; it is then used at the cell holding the centre and at the two
        neighbouring cells nearest to the centre (x and y, offset 0.5), as in YOLOv5/YOLOv7.
        Order: offset-major, then anchor, then target (YOLOv7's order).
        """
        device = targets.device
        nt = targets.shape[0]
        anchors_all = self.anchors(device)
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
        device = p[0].device
        anchors_all = self.anchors(device)
        lcls = torch.zeros(1, device=device)
        lbox = torch.zeros(1, device=device)
        lobj = torch.zeros(1, device=device)
        gr = self.gr
        for i, pi in enumerate(p):
            b, a, gj, gi, t = positives[i]
            tobj = torch.zeros(pi.shape[:4], device=device, dtype=torch.float32)
            n = b.shape[0]
            if n:
                ps = pi[b, a, gj, gi].float()
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
                tobj[b, a, gj, gi] = (1.0 - gr) + gr * iou.detach().clamp(0)
                if self.nc > 1:  # a one-class model has no class loss
                    tc = torch.full_like(ps[:, 5:], self.cn)
                    tc[torch.arange(n, device=device), targets[t, 1].long()] = self.cp
                    lcls = lcls + self.BCEcls(ps[:, 5:], tc)
            obji = self.BCEobj(pi[..., 4].float(), tobj)
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
    """YOLOv7's loss with SimOTA-style dynamic-k assignment, batched over images."""

    topk_iou = 10  # candidates whose IoUs are summed into dynamic k
    iou_weight = 3.0  # cost = class BCE + iou_weight * -log(IoU)

    def assign(self, p: Sequence[torch.Tensor], targets: torch.Tensor,
               imgs: Optional[torch.Tensor] = None) -> list[Level]:
        """OTA positives (see :meth:`build_targets`)."""
        return self.build_targets(p, targets, imgs)

    @torch.no_grad()
    def build_targets(self, p: Sequence[torch.Tensor], targets: torch.Tensor,
                      imgs: Optional[torch.Tensor] = None) -> list[Level]:
        """OTA positives per level: ``(b, a, gj, gi, t)``, ``t`` = matched row of ``targets``.

        ``imgs`` (B, 3, H, W) only supplies the input size (else it is taken from the
        first level's grid and stride).
        """
        device = p[0].device
        empty = torch.zeros(0, dtype=torch.long, device=device)
        if targets.shape[0] == 0:
            return [(empty, empty, empty, empty, empty) for _ in range(self.nl)]
        cand = self._unique_candidates(p, targets)
        if cand is None:
            return [(empty, empty, empty, empty, empty) for _ in range(self.nl)]
        strides = [float(s) for s in self.det.stride]
        if imgs is not None:
            img_hw = (imgs.shape[-2], imgs.shape[-1])
        else:
            img_hw = (p[0].shape[2] * strides[0], p[0].shape[3] * strides[0])
        pbox, pcls, pobj = self._decode(p, cand, strides)
        dense = self._dense(cand, pbox, pcls, pobj, p[0].shape[0])
        iou, cost = self._cost(targets, dense, img_hw)
        win = self._match(targets, iou, cost, dense["valid"], p[0].shape[0])
        return self._to_levels(targets, win, cand, dense["starts"])

    def _unique_candidates(self, p: Sequence[torch.Tensor], targets: torch.Tensor) -> Optional[dict]:
        """Candidate predictions, one per (image, level, anchor, cell), sorted so they are grouped by image."""
        device = p[0].device
        cand = self.find_positives(p, targets)
        sizes = [self.na * pi.shape[2] * pi.shape[3] for pi in p]
        per_image = sum(sizes)
        level_base = [sum(sizes[:i]) for i in range(self.nl)]
        ids, lvls = [], []
        for i, (b, a, gj, gi, _) in enumerate(cand):
            ny, nx = p[i].shape[2], p[i].shape[3]
            ids.append(b * per_image + level_base[i] + (a * ny + gj) * nx + gi)
            lvls.append(torch.full_like(b, i))
        ids_all = torch.cat(ids)
        if ids_all.numel() == 0:
            return None
        uid, inv = torch.unique(ids_all, sorted=True, return_inverse=True)  # sorted: grouped by image
        rep = torch.empty(uid.numel(), dtype=torch.long, device=device)
        rep.scatter_(0, inv, torch.arange(inv.numel(), device=device))  # any member: same prediction
        out = {"lvl": torch.cat(lvls)[rep]}
        for j, name in enumerate(("b", "a", "gj", "gi")):
            out[name] = torch.cat([c[j] for c in cand])[rep]
        return out

    def _decode(self, p: Sequence[torch.Tensor], cand: dict, strides: Sequence[float]):
        """The candidates' boxes (pixels, xyxy), class logits and objectness logits."""
        device = p[0].device
        nu = cand["b"].numel()
        anchors_all = self.anchors(device)
        pbox = torch.zeros(nu, 4, device=device)
        pcls = torch.zeros(nu, self.nc, device=device)
        pobj = torch.zeros(nu, 1, device=device)
        b_u, a_u, gj_u, gi_u = cand["b"], cand["a"], cand["gj"], cand["gi"]
        for i in range(self.nl):
            m = cand["lvl"] == i
            if not bool(m.any()):
                continue
            fg = p[i][b_u[m], a_u[m], gj_u[m], gi_u[m]].float()
            grid = torch.stack((gi_u[m], gj_u[m]), 1).float()
            pxy = (fg[:, :2].sigmoid() * 2.0 - 0.5 + grid) * strides[i]
            pwh = (fg[:, 2:4].sigmoid() * 2) ** 2 * anchors_all[i][a_u[m]] * strides[i]
            pbox[m] = torch.cat((pxy - pwh / 2, pxy + pwh / 2), 1)
            pcls[m] = fg[:, 5:]
            pobj[m] = fg[:, 4:5]
        return pbox, pcls, pobj

    def _dense(self, cand: dict, pbox: torch.Tensor, pcls: torch.Tensor, pobj: torch.Tensor, bs: int) -> dict:
        """Dense (image, column) layout of the candidates: boxes and the log terms of the class cost."""
        device = pbox.device
        b_u = cand["b"]
        counts = torch.bincount(b_u, minlength=bs)
        starts = torch.cumsum(counts, 0) - counts
        col = torch.arange(b_u.numel(), device=device) - starts[b_u]
        ncol = int(counts.max())
        valid = torch.zeros(bs, ncol, dtype=torch.bool, device=device)
        valid[b_u, col] = True
        box_d = torch.zeros(bs, ncol, 4, device=device)
        box_d[b_u, col] = pbox
        # class score y = sqrt(sigmoid(cls) * sigmoid(obj)) (YOLOv7); BCE(y, one_hot(c)) summed over
        # classes = sum_k -log(1 - y_k) + (-log y_c + log(1 - y_c)): no (gt, column, class) tensor needed
        y = (pcls.sigmoid() * pobj.sigmoid()).sqrt().clamp(1e-7, 1 - 1e-7)
        log_y, log_1my = y.log(), (-y).log1p()
        neg_sum = torch.zeros(bs, ncol, device=device)
        neg_sum[b_u, col] = -log_1my.sum(1)
        logy_d = torch.zeros(bs, ncol, self.nc, device=device)
        logy_d[b_u, col] = log_y
        log1my_d = torch.zeros(bs, ncol, self.nc, device=device)
        log1my_d[b_u, col] = log_1my
        return {"starts": starts, "valid": valid, "box": box_d, "neg_sum": neg_sum, "logy": logy_d,
                "log1my": log1my_d}

    def _cost(self, targets: torch.Tensor, dense: dict, img_hw: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """IoU and cost (class BCE + iou_weight * -log IoU) of every ground truth against its image's candidates."""
        device = targets.device
        tb, tc = targets[:, 0].long(), targets[:, 1].long()
        img_h, img_w = img_hw
        gain = torch.tensor([img_w, img_h, img_w, img_h], device=device, dtype=torch.float32)
        txywh = targets[:, 2:6].float() * gain
        txyxy = torch.cat((txywh[:, :2] - txywh[:, 2:] / 2, txywh[:, :2] + txywh[:, 2:] / 2), 1)
        iou = bbox_iou(txyxy[:, None, :], dense["box"][tb], x1y1x2y2=True).clamp(0, 1)  # (nt, ncol)
        vrow = dense["valid"][tb]
        iou = iou * vrow
        cols = torch.arange(vrow.shape[1], device=device)[None]
        cls_cost = (dense["neg_sum"][tb] - dense["logy"][tb[:, None], cols, tc[:, None]]
                    + dense["log1my"][tb[:, None], cols, tc[:, None]])
        cost = cls_cost + self.iou_weight * -torch.log(iou + 1e-8)
        return iou, cost.masked_fill(~vrow, float("inf"))

    def _match(self, targets: torch.Tensor, iou: torch.Tensor, cost: torch.Tensor, valid: torch.Tensor,
               bs: int) -> torch.Tensor:
        """(nt, ncol) winners: each ground truth's dynamic-k cheapest candidates; a candidate claimed by
        several goes to the image's ground truth with the lowest cost for it, claimant or not (YOLOv7 /
        YOLOX SimOTA; ties -> first row)."""
        device = cost.device
        nt, ncol = cost.shape
        tb = targets[:, 0].long()
        vrow = valid[tb]
        kk = min(self.topk_iou, ncol)
        dynamic_k = iou.topk(kk, dim=1).values.sum(1).int().clamp(min=1)
        order = cost.topk(kk, dim=1, largest=False).indices  # (nt, kk)
        take = torch.arange(kk, device=device)[None] < dynamic_k[:, None]
        match = torch.zeros(nt, ncol, dtype=torch.bool, device=device)
        match.scatter_(1, order, take)
        match &= vrow
        tbx = tb[:, None].expand(nt, ncol)
        claims = torch.zeros(bs, ncol, device=device).index_add_(0, tb, match.float())
        contested = (claims > 1)[tb]
        col_min = torch.full((bs, ncol), float("inf"), device=device)
        col_min.scatter_reduce_(0, tbx, cost, reduce="amin")
        rows = torch.arange(nt, device=device)[:, None].expand(nt, ncol)
        first = torch.full((bs, ncol), nt, dtype=torch.long, device=device)
        first.scatter_reduce_(0, tbx, torch.where(cost == col_min[tb], rows, torch.full_like(rows, nt)),
                              reduce="amin")
        return torch.where(contested, rows == first[tb], match)

    def _to_levels(self, targets: torch.Tensor, win: torch.Tensor, cand: dict, starts: torch.Tensor) -> list[Level]:
        """Winners back to per-level ``(b, a, gj, gi, t)``."""
        tb = targets[:, 0].long()
        t_idx, c_idx = win.nonzero(as_tuple=True)
        u_idx = starts[tb[t_idx]] + c_idx
        lv = cand["lvl"][u_idx]
        out: list[Level] = []
        for i in range(self.nl):
            m = lv == i
            u = u_idx[m]
            out.append((cand["b"][u], cand["a"][u], cand["gj"][u], cand["gi"][u], t_idx[m]))
        return out
