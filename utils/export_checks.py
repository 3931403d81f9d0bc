"""How an exported file is compared with PyTorch: relative errors in float64 and the tolerance rule of the
fp32 checks (``max(--rtol, --rtol-factor x`` the float32 model's own error)).

An output that is out of tolerance or of the wrong shape raises :class:`ExportError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from utils.cli import RunFailed


class ExportError(RunFailed, RuntimeError):
    """An export could not be made or does not reproduce the PyTorch model (one line, exit code 1)."""



# --------------------------------------------------------------------------- comparison helpers
def rel_error(ref: torch.Tensor | np.ndarray, out: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """(max |ref - out|, max |ref - out| / max |ref|) of one output tensor, in float64."""
    ref = torch.as_tensor(ref).detach().cpu().double()
    out = torch.as_tensor(out).detach().cpu().double()
    if ref.shape != out.shape:
        raise ExportError(f"output shape {tuple(out.shape)} differs from PyTorch's {tuple(ref.shape)}")
    if ref.numel() == 0:
        return 0.0, 0.0
    diff = float((ref - out).abs().max())
    return diff, diff / max(float(ref.abs().max()), 1e-12)



def _as_list(y: Any) -> list[torch.Tensor]:
    return list(y) if isinstance(y, (list, tuple)) else [y]



def worst_rel_error(refs: Sequence[torch.Tensor], outs: Sequence[Any]) -> tuple[float, float]:
    """(max abs diff, max relative error) over paired outputs, each by :func:`rel_error`."""
    worst_abs, worst_rel = 0.0, 0.0
    for r, o in zip(refs, outs):
        a, rel = rel_error(r, o)
        worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, rel)
    return worst_abs, worst_rel



@dataclass(frozen=True)
class Tolerance:
    """The largest relative error a file may have against the float64 reference, and how it was set."""

    value: float
    why: str

    def __str__(self) -> str:
        return f"{self.value:.3g} = {self.why}"



def fp32_tolerance(e32: float, floor: float, factor: float) -> Tolerance:
    """``max(floor, factor * e32)``: a float32 file may be ``factor`` times as far from float64 as the
    float32 unfused model is on the same input (``e32``), and always ``floor``."""
    return Tolerance(max(floor, factor * e32), f"max(--rtol {floor:g}, {factor:g} x float32 error {e32:.3g})")
