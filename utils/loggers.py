"""Training logs: the per-epoch ``results.csv``, TensorBoard scalars, the non-finite loss guard, and
:class:`TrainLog`, the one rank-aware object through which train.py reports (rank 0 writes, others stay quiet).

``results.csv`` has one header row and one row per finished epoch (epochs numbered from 0).
Rows are appended and fsynced one at a time; a resumed run first drops every row of an epoch
it is about to train again, so a run that was killed and resumed lists each epoch exactly once.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
from tqdm import tqdm

from utils.log import LOGGER

RESULTS_HEADER = [
    "epoch",
    "train/box_loss", "train/obj_loss", "train/cls_loss",
    "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
    "val/box_loss", "val/obj_loss", "val/cls_loss",
    "x/lr0", "x/lr1", "x/lr2",
]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or weights; the run stops (train.py says which checkpoint is good)."""


def check_finite_loss(loss: torch.Tensor, loss_items: torch.Tensor, epoch: int, batch: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the epoch, batch and loss terms when ``loss`` is NaN/inf."""
    if bool(torch.isfinite(loss).all()):
        return
    items = ", ".join(f"{n}={float(v):.4g}" for n, v in zip(("box", "obj", "cls", "total"), loss_items.flatten()))
    raise NonFiniteLossError(
        f"non-finite training loss at epoch {epoch}, batch {batch} ({items}); stopping. "
        f"Try a lower lr0 in --hyp, check the labels, or disable AMP")


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


class TrainLog:
    """What a training run reports, in one place: messages, progress bars, ``results.csv``, TensorBoard.

    Built on every rank; only the main process (rank -1 or 0) prints or writes, so the training
    code calls it unconditionally instead of guarding each call with ``if rank 0``.
    """

    def __init__(self, rank: int, save_dir: Optional[Path] = None):
        self.main = rank in (-1, 0)
        self.csv = ResultsCSV(save_dir / "results.csv") if self.main and save_dir is not None else None
        self.tb: Optional[TBLogger] = None
        self.save_dir = save_dir

    def info(self, msg: str) -> None:
        if self.main:
            LOGGER.info(msg)

    def warning(self, msg: str) -> None:
        if self.main:
            LOGGER.warning(msg)

    def start(self, start_epoch: int) -> None:
        """Open the logs for training from ``start_epoch`` (drops rows of epochs about to be trained again)."""
        if self.main and self.save_dir is not None:
            self.csv.start(start_epoch)
            self.tb = TBLogger(self.save_dir)

    def progress(self, iterable: Iterable, total: int) -> Iterable:
        """A tqdm bar over ``iterable`` on the main process, the bare iterable elsewhere."""
        if not self.main:
            return iterable
        return tqdm(iterable, total=total, bar_format="{l_bar}{bar:10}{r_bar}{bar:-10b}")

    def describe(self, bar: Any, text: str) -> None:
        if self.main and hasattr(bar, "set_description"):
            bar.set_description(text)

    def epoch(self, epoch: int, row: Sequence[float]) -> None:
        """One finished epoch: the csv row (fsynced before any checkpoint of it) and the TensorBoard scalars."""
        if self.csv is not None:
            self.csv.append(epoch, row)
        if self.tb is not None:
            self.tb.log_scalars(dict(zip(RESULTS_HEADER[1:], row)), epoch)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
