"""MOTChallenge text files: ``frame,id,left,top,width,height,conf,-1,-1,-1``, frames from 1.

:class:`MotFiles` writes one file per sequence, each to a temp file beside its target that is
renamed into place when the sequence (or the run) ends, as every artifact of the project is
written (``utils.atomic``); :func:`read_mot` reads such a file (or a ground-truth file) back.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO, Optional, Union

import numpy as np

from utils.atomic import atomic_write


def mot_rows(frame: int, tracked: np.ndarray) -> str:
    """MOTChallenge rows of one frame's tracks, (m, 7) ``x1, y1, x2, y2, conf, cls, id``."""
    out = []
    for x1, y1, x2, y2, conf, _cls, tid in np.asarray(tracked, np.float64).reshape(-1, 7):
        out.append(f"{frame},{int(tid)},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{conf:.4f},-1,-1,-1\n")
    return "".join(out)


def read_mot(path: Union[str, Path]) -> np.ndarray:
    """(n, k) float array of a MOTChallenge file's rows: k = 10 for results, 9 for ground truth.

    Every row must have the first row's number of values, at least 6; an empty file gives (0, 10).
    Raises ValueError naming the file and line otherwise.
    """
    rows: list[list[float]] = []
    for ln, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = [float(v) for v in line.split(",")]
        except ValueError:
            raise ValueError(f"{path}:{ln}: not comma-separated numbers: {line[:80]!r}") from None
        if len(row) < 6 or (rows and len(row) != len(rows[0])):
            raise ValueError(f"{path}:{ln}: {len(row)} values; expected {len(rows[0]) if rows else 'at least 6'}")
        rows.append(row)
    return np.array(rows, np.float64) if rows else np.zeros((0, 10))


class MotFiles:
    """Open MOT files by output slot (one per stream of a batch): a new path in a slot finishes the old file."""

    def __init__(self) -> None:
        self._paths: dict[int, str] = {}
        self._files: dict[int, tuple[contextlib.ExitStack, IO]] = {}
        self.saved: list[str] = []

    def write(self, slot: int, path: Union[str, Path], text: str) -> None:
        """Append ``text`` to ``path`` (opened on first use in ``slot``)."""
        path = str(path)
        if self._paths.get(slot) != path:
            self._close(slot)
            stack = contextlib.ExitStack()
            f = stack.enter_context(atomic_write(path, "w", encoding="utf-8"))
            self._paths[slot], self._files[slot] = path, (stack, f)
            self.saved.append(path)
        self._files[slot][1].write(text)

    def _close(self, slot: int, exc: Optional[BaseException] = None) -> None:
        entry = self._files.pop(slot, None)
        self._paths.pop(slot, None)
        if entry is not None:
            entry[0].close()  # renames the finished temp file into place

    def close(self) -> None:
        """Finish every open file."""
        for slot in list(self._files):
            self._close(slot)
