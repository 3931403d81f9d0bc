"""Training logs: the per-epoch ``results.csv``, TensorBoard scalars, and the non-finite loss guard.

``results.csv`` has one header row and one row per finished epoch (epochs numbered from 0).
Rows are appended and fsynced one at a time; a resumed run first drops every row of an epoch
it is about to train again, so a run that was killed and resumed lists each epoch exactly once.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

import torch

from utils.general import LOGGER

RESULTS_HEADER = [
    "epoch",
    "train/box_loss", "train/obj_loss", "train/cls_loss",
    "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
    "val/box_loss", "val/obj_loss", "val/cls_loss",
    "x/lr0", "x/lr1", "x/lr2",
]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run stops and keeps the last good checkpoint."""


def check_finite_loss(loss: torch.Tensor, loss_items: torch.Tensor, epoch: int, batch: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the epoch, batch and loss terms when ``loss`` is NaN/inf."""
    if bool(torch.isfinite(loss).all()):
        return
    items = ", ".join(f"{n}={float(v):.4g}" for n, v in zip(("box", "obj", "cls", "total"), loss_items.flatten()))
    raise NonFiniteLossError(
        f"non-finite training loss at epoch {epoch}, batch {batch} ({items}). Stopping; last.pt keeps "
        f"the last good epoch. Try a lower lr0 in --hyp, check the labels, or disable AMP.")


class ResultsCSV:
    """Append-only ``results.csv`` writer that keeps exactly one row per epoch across resumes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read_rows(self) -> list[list[str]]:
        """Data rows (without the header) currently in the file; [] when the file is absent."""
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        return [r for r in rows[1:] if r and r[0].strip() != RESULTS_HEADER[0]]

    def start(self, start_epoch: int = 0) -> None:
        """Prepare the file for training from ``start_epoch``: header + rows of earlier epochs only.

        Rows with epoch >= start_epoch (written by an interrupted run after its last checkpoint,
        or partial lines) are dropped, as are duplicates; the file is rewritten atomically.
        """
        kept: dict[int, list[str]] = {}
        for r in self.read_rows():
            try:
                e = int(float(r[0]))
            except ValueError:
                continue
            if e < start_epoch and len(r) == len(RESULTS_HEADER):
                kept[e] = r
        dropped = len(self.read_rows()) - len(kept)
        if dropped:
            LOGGER.info(f"{self.path}: dropped {dropped} row(s) of epochs >= {start_epoch} before resuming")
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(RESULTS_HEADER)
            for e in sorted(kept):
                w.writerow(kept[e])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, epoch: int, values: Sequence[float]) -> None:
        """Append the row of ``epoch``: ``values`` are the 13 numbers after the epoch column."""
        if len(values) != len(RESULTS_HEADER) - 1:
            raise ValueError(f"results row needs {len(RESULTS_HEADER) - 1} values, got {len(values)}")
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([epoch] + [f"{float(v):.6g}" for v in values])
            f.flush()
            os.fsync(f.fileno())


class TBLogger:
    """TensorBoard scalars under the run folder; a warning, not a crash, if tensorboard is missing."""

    def __init__(self, log_dir: str | Path):
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(log_dir))
            LOGGER.info(f"TensorBoard: start with 'tensorboard --logdir {Path(log_dir).parent}', "
                        f"view at http://localhost:6006/")
        except Exception as e:  # ImportError, or a broken protobuf install
            LOGGER.warning(f"TensorBoard logging disabled ({type(e).__name__}: {e})")

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for k, v in scalars.items():
            v = float(v)
            if math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
