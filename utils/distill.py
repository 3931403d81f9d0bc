"""Knowledge distillation of a detector's head outputs (``train.py --teacher best.pt``).

The teacher (a trained detector with the same classes, detection levels, anchors per level and strides,
for example a yolov7-tiny run on the same data) sees every training batch in eval mode. Its decoded
predictions become soft targets for the student's, cell by cell of the head, in decoded space (pixel
boxes, objectness and class probabilities), so teacher and student may have different anchors:

- objectness: BCE of the student's objectness logit against the teacher's probability, at every cell;
- classes: BCE of the student's class logits against the teacher's probabilities, weighted by the
  teacher's objectness (cells where the teacher sees nothing carry no class signal);
- boxes: L1 distance of the decoded boxes in units of the level's stride, weighted the same way.

Each part is scaled by the run's own (already scaled) ``box`` / ``obj`` / ``cls`` gains, summed, multiplied
by the batch size as the detection loss is, and by the hyp ``distill`` gain (default 1). The student's
architecture is untouched: the deployed model is the plain student, fused exactly as without a teacher.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_GAIN = 1.0


def cell_strides(raw: Sequence[torch.Tensor], strides: torch.Tensor) -> torch.Tensor:
    """The stride of every head cell, in the order of the decoded (B, N, no) tensor: shape (N,)."""
    return torch.cat([torch.full((r.shape[1] * r.shape[2] * r.shape[3],), float(s), device=r.device,
                                 dtype=r.dtype) for r, s in zip(raw, strides)])


def check_compatible(student_head: nn.Module, teacher_head: nn.Module, where: str) -> None:
    """Refuse a teacher whose head does not predict the same cells and classes (``ValueError`` naming ``where``)."""
    mine = (student_head.nc, student_head.nl, student_head.na, [float(s) for s in student_head.stride])
    theirs = (teacher_head.nc, teacher_head.nl, teacher_head.na, [float(s) for s in teacher_head.stride])
    if mine != theirs:
        raise ValueError(f"{where}: the teacher predicts (classes, levels, anchors per level, strides) {theirs}, "
                         f"the student {mine}: they must be equal to distil")


def distillation_loss(raw: Sequence[torch.Tensor], decoded: torch.Tensor, teacher: torch.Tensor,
                      strides: torch.Tensor, hyp: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, detached (box, obj, cls) parts) of the student's outputs against the teacher's.

    ``raw``: the student's train-mode outputs (nl tensors (B, na, ny, nx, no) of logits); ``decoded``: the same
    decoded (B, N, no), differentiable; ``teacher``: the teacher's decoded eval output (B, N, no), no grad;
    ``strides``: :func:`cell_strides`; ``hyp``: the run's scaled gains and the optional ``distill`` gain.
    """
    bs, no = decoded.shape[0], decoded.shape[-1]
    logits = torch.cat([r.reshape(bs, -1, no) for r in raw], 1)
    teacher = teacher.detach().to(logits.dtype)
    weight = teacher[..., 4]
    total = weight.sum().clamp(min=1e-6)
    lobj = F.binary_cross_entropy_with_logits(logits[..., 4], weight)
    if no > 6:
        cls = F.binary_cross_entropy_with_logits(logits[..., 5:], teacher[..., 5:], reduction="none").mean(-1)
        lcls = (cls * weight).sum() / total
    else:  # one class: nothing to tell apart
        lcls = logits.new_zeros(())
    box = (decoded[..., :4].to(logits.dtype) - teacher[..., :4]).abs().sum(-1) / strides
    lbox = (box * weight).sum() / total
    parts = torch.stack((lbox * hyp["box"], lobj * hyp["obj"], lcls * hyp["cls"]))
    loss = parts.sum() * bs * float(hyp.get("distill", DEFAULT_GAIN))
    return loss, parts.detach()


__all__ = ["DEFAULT_GAIN", "cell_strides", "check_compatible", "distillation_loss"]
