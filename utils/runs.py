"""Run folders for resumed training: write only into a real run folder, never beside an arbitrary file.

A run folder is ``<project>/<name>`` holding ``weights/last.pt`` (and ``best.pt``), ``results.csv``,
``hyp.yaml``, ``opt.yaml``. ``--resume path/last.pt`` continues in the folder recorded in the
checkpoint (``opt['save_dir']``) only when the checkpoint really lives in that folder's
``weights/``; a checkpoint copied elsewhere (``~/Downloads/last.pt``) resumes into a new numbered
folder under ``--project``, so nothing beside the copy is ever overwritten.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional, Union

from utils.atomic import TEMP_SUFFIX
from utils.log import LOGGER

PathLike = Union[str, Path]
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")


def _is_candidate(p: Path) -> bool:
    """A regular, non-empty checkpoint file that is not one of utils.atomic's temp files."""
    if p.name.startswith(".") or p.name.endswith(TEMP_SUFFIX):
        return False
    try:
        return p.is_file() and p.stat().st_size > 0
    except OSError:
        return False


def resume_candidates(weights_dir: PathLike) -> list[Path]:
    """Checkpoints to resume from, best first: ``last.pt``, ``best.pt``, then ``epoch_NNN.pt`` newest epoch first.

    Temp files of an interrupted save (``.last.pt.XXXX.tmp``) and empty files are ignored, so a run
    killed during its first save still resumes from whatever was written completely.
    """
    d = Path(weights_dir)
    if not d.is_dir():
        return []
    out = [d / n for n in ("last.pt", "best.pt") if _is_candidate(d / n)]
    epochs = [(int(m.group(1)), p) for p in d.iterdir() if (m := _EPOCH_FILE.match(p.name)) and _is_candidate(p)]
    out += [p for _, p in sorted(epochs, key=lambda t: -t[0])]
    return out


def find_resume_checkpoint(search_dir: PathLike = "runs") -> Optional[Path]:
    """For a bare ``--resume``: the first candidate of the most recently written ``weights/`` under ``search_dir``."""
    root = Path(search_dir)
    if not root.is_dir():
        return None
    best: Optional[tuple[float, Path]] = None
    for wdir in root.rglob("weights"):
        cands = resume_candidates(wdir)
        if cands:
            t = max(p.stat().st_mtime for p in cands)
            if best is None or t > best[0]:
                best = (t, cands[0])
    return best[1] if best else None


def _recorded_dir(ckpt: Any) -> Optional[Path]:
    opt = ckpt.get("opt") if isinstance(ckpt, dict) else None
    save_dir = opt.get("save_dir") if isinstance(opt, dict) else None
    return Path(save_dir) if isinstance(save_dir, str) and save_dir.strip() else None


def lives_in_run_dir(ckpt_path: PathLike, run_dir: PathLike) -> bool:
    """True when ``ckpt_path`` is a file in ``run_dir/weights/``.

    A relative ``run_dir`` (as recorded by a run started elsewhere) also matches when the
    checkpoint's run folder ends with those same components (``runs/train/exp`` started from
    another working directory); an absolute one must match exactly. Symlinks are resolved.
    """
    wdir = Path(ckpt_path).resolve().parent
    if wdir.name != "weights":
        return False
    actual, run_dir = wdir.parent, Path(run_dir)
    if actual == run_dir.resolve():
        return True
    if run_dir.is_absolute():
        return False
    parts = [p for p in run_dir.parts if p not in ("", ".")]
    return bool(parts) and ".." not in parts and list(actual.parts[-len(parts):]) == parts


def resume_save_dir(ckpt_path: PathLike, ckpt: dict, project: PathLike, name: str, exist_ok: bool = False) -> Path:
    """The folder a resumed run writes into.

    The run folder recorded in ``ckpt['opt']['save_dir']`` when ``ckpt_path`` lives in its
    ``weights/`` (see :func:`lives_in_run_dir`); otherwise a new folder from
    :func:`utils.general.increment_path` under ``project/name`` (created, numbered; an existing
    one only with ``exist_ok``). Never a folder derived from where the file happens to be.
    """
    ckpt_path = Path(ckpt_path)
    recorded = _recorded_dir(ckpt)
    if recorded is not None and lives_in_run_dir(ckpt_path, recorded):
        return ckpt_path.resolve().parent.parent
    new = increment_path(Path(project) / name, exist_ok=exist_ok)
    where = f"its recorded run folder {recorded}" if recorded is not None else "a run folder"
    LOGGER.warning(f"WARNING: {ckpt_path} is not inside {where}'s weights/; the resumed run writes into "
                   f"the new folder {new}")
    return new


__all__ = ["find_resume_checkpoint", "lives_in_run_dir", "resume_candidates", "resume_save_dir"]


def _taken_numbers(parent: Path, name: str, sep: str) -> list[int]:
    """The N of every entry ``<name><sep>N`` in ``parent`` (matched literally: no glob patterns)."""
    pattern = re.compile(rf"{re.escape(name)}{re.escape(sep)}(\d+)")
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    return [int(m.group(1)) for e in entries if (m := pattern.fullmatch(e))]


def increment_path(path: Union[str, Path], exist_ok: bool = False, sep: str = "", mkdir: bool = True) -> Path:
    """A fresh run folder: runs/exp, then runs/exp2, runs/exp3, ... (YOLOv7's numbering).

    The whole last component is the name, dots included (``v1.0`` -> ``v1.0``, ``v1.02``,
    ``v1.03``; ``exp2`` -> ``exp2``, ``exp22``); the number is one more than the highest taken.
    With ``mkdir`` (the default) the folder is created exclusively, so two runs started at
    the same moment never share one; an existing path is never returned unless ``exist_ok``.
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"run folder '{path}' has no name (give --name)")
    if exist_ok or not (path.exists() or path.is_symlink()):
        if mkdir:
            try:
                path.mkdir(parents=True, exist_ok=exist_ok)
                return path
            except FileExistsError:  # created by a concurrent run (or a file): number it below
                if exist_ok:
                    raise
        else:
            return path
    parent, name = path.parent, path.name
    n = max(_taken_numbers(parent, name, sep), default=1) + 1
    while True:
        cand = parent / f"{name}{sep}{n}"
        if not mkdir:
            if not (cand.exists() or cand.is_symlink()):
                return cand
        else:
            try:
                cand.mkdir(parents=True)
                return cand
            except FileExistsError:
                pass
        n += 1
