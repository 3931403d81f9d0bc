"""Hyperparameter evolution as YOLOv7's ``train.py --evolve`` does it.

Each generation: pick a parent among the best rows of ``evolve.txt`` (by fitness
0.1 mAP@.5 + 0.9 mAP@.5:.95), multiply each hyperparameter by a random factor (mutation
probability 0.8, sigma 0.2 scaled by the key's gain, factor clipped to [0.3, 3]), clip to the
key's bounds, train, and append the result. ``hyp_evolved.yaml`` always holds the best row so far.

``evolve.txt`` holds one row per generation: the 7 results (P, R, mAP@.5, mAP@.5:.95, val
box/obj/cls loss) then the evolved hyperparameters, sorted by fitness (best first). Unlike
YOLOv7's, the file starts with a ``#`` header line naming the columns (``numpy.loadtxt`` skips
it), so the columns are found by name; a header-less YOLOv7 file is read with the caller's keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import yaml

from utils.atomic import write_text
from utils.cli import UserError
from utils.hyp import EVOLVE
from utils.metrics import fitness
from utils.plots import _figure, _save_figure

PathLike = Union[str, Path]
RESULT_NAMES = ("P", "R", "mAP@.5", "mAP@.5:.95", "val_box", "val_obj", "val_cls")
NR = len(RESULT_NAMES)
MUTATION_PROB, SIGMA, FACTOR_CLIP = 0.8, 0.2, (0.3, 3.0)
TOP_N = 5  # parents are drawn from this many best rows

META = EVOLVE  # key -> (mutation gain, lower bound, upper bound), YOLOv7's table (utils.hyp.SPECS)


class EvolveError(UserError, ValueError):
    """An evolve.txt that cannot be used (the message names the file)."""


@dataclass
class EvolveTable:
    """The rows of evolve.txt: ``rows[:, :7]`` results, ``rows[:, 7:]`` the values of ``keys``."""

    keys: list[str]
    rows: np.ndarray

    @property
    def fitness(self) -> np.ndarray:
        return fitness(self.rows[:, :4]) if len(self.rows) else np.zeros(0)

    def hyp(self, i: int) -> dict[str, float]:
        """Row ``i`` as {key: value}."""
        return {k: float(v) for k, v in zip(self.keys, self.rows[i, NR:])}


def evolvable_keys(hyp: dict) -> list[str]:
    """The keys of ``hyp`` that evolve (YOLOv7's table order). ``anchors`` evolves only when the hyp sets it."""
    return [k for k in META if k in hyp]


def constrain(hyp: dict) -> dict:
    """``hyp`` with every evolvable value clipped to its bounds and rounded to 5 decimals (as YOLOv7)."""
    out = dict(hyp)
    for k in evolvable_keys(out):
        _, lo, hi = META[k]
        out[k] = round(min(max(float(out[k]), lo), hi), 5)
    return out


def mutate(hyp: dict, rng: np.random.Generator, mp: float = MUTATION_PROB, sigma: float = SIGMA) -> dict:
    """Multiply the evolvable values by random factors (at least one changes), then :func:`constrain`."""
    keys = evolvable_keys(hyp)
    g = np.array([META[k][0] for k in keys], dtype=np.float64)
    if not keys or not (g > 0).any() or mp <= 0 or sigma <= 0:
        return constrain(hyp)
    v = np.ones(len(keys))
    while np.all(v == 1):  # mutate until something changes (no duplicate generations)
        v = (g * (rng.random(len(keys)) < mp) * rng.standard_normal(len(keys)) * rng.random() * sigma + 1)
        v = v.clip(*FACTOR_CLIP)
    out = dict(hyp)
    for k, f in zip(keys, v):
        out[k] = float(out[k]) * float(f)
    return constrain(out)


def select_parent(table: EvolveTable, rng: np.random.Generator, method: str = "single",
                  n: int = TOP_N) -> dict[str, float]:
    """A parent from the ``n`` fittest rows: one drawn with weight fitness - min (``single``) or their weighted mean."""
    if not len(table.rows):
        raise EvolveError("evolve.txt has no rows to select a parent from")
    order = np.argsort(-table.fitness, kind="stable")[:n]
    rows, f = table.rows[order], table.fitness[order]
    w = f - f.min() + 1e-6  # the +1e-6 keeps a single row (or equal fitness) selectable
    if method == "single" or len(rows) == 1:
        x = rows[int(rng.choice(len(rows), p=w / w.sum()))]
    elif method == "weighted":
        x = (rows * w[:, None]).sum(0) / w.sum()
    else:
        raise ValueError(f"parent selection must be 'single' or 'weighted', got {method!r}")
    return {k: float(v) for k, v in zip(table.keys, x[NR:])}


def next_hyp(base: dict, evolve_txt: PathLike, rng: Optional[np.random.Generator] = None,
             method: str = "single") -> dict:
    """The hyperparameters of the next generation: ``base`` constrained (no evolve.txt yet) or a mutated parent."""
    rng = rng if rng is not None else np.random.default_rng()
    path = Path(evolve_txt)
    if not path.is_file() or path.stat().st_size == 0:
        return constrain(base)
    table = read_evolve(path, keys=evolvable_keys(base))
    if not len(table.rows):
        return constrain(base)
    parent = {k: v for k, v in select_parent(table, rng, method).items() if k in base}
    return mutate({**base, **parent}, rng)


# --------------------------------------------------------------------------- evolve.txt
def _header(keys: Sequence[str]) -> str:
    return "# " + " ".join((*RESULT_NAMES, *keys))


def read_evolve(path: PathLike, keys: Optional[Sequence[str]] = None) -> EvolveTable:
    """Read evolve.txt; the header names the columns, else ``keys`` (a header-less YOLOv7 file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EvolveError(f"{path}: cannot read ({e})") from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if first.startswith("#"):
        names = first[1:].split()
        if tuple(names[:NR]) != RESULT_NAMES or any(k not in META for k in names[NR:]):
            raise EvolveError(f"{path}: header must be '# {' '.join(RESULT_NAMES)} <hyp keys>', got {first[:120]!r}")
        keys = names[NR:]
    elif keys is None:
        raise EvolveError(f"{path}: no header line naming the columns")
    try:
        rows = np.loadtxt(path, ndmin=2, comments="#", dtype=np.float64)
    except ValueError as e:
        raise EvolveError(f"{path}: not a table of numbers ({e})") from None
    rows = rows.reshape(-1, NR + len(keys)) if rows.size == 0 else rows
    if rows.shape[1] != NR + len(keys):
        raise EvolveError(f"{path}: {rows.shape[1]} columns, expected {NR} results + {len(keys)} hyperparameters")
    return EvolveTable(list(keys), rows)


def _as_written(v: float) -> float:
    """``v`` as evolve.txt stores it (5 significant digits), so a repeated generation is seen as one."""
    return float(f"{float(v):.5g}")


def write_evolve(path: PathLike, table: EvolveTable) -> Path:
    """Write ``table`` (header line, rows best first) atomically."""
    lines = [_header(table.keys)]
    lines += [" ".join(f"{v:12.5g}" for v in row) for row in table.rows]
    return write_text(path, "\n".join(lines) + "\n")


def append_evolve(evolve_txt: PathLike, hyp: dict, results: Sequence[float]) -> EvolveTable:
    """Add one generation (``results``: the 7 values train() returns) and rewrite evolve.txt sorted best first.

    Non-finite results count as 0 (a diverged generation is the least fit). Duplicate rows are kept once.
    """
    path = Path(evolve_txt)
    keys = evolvable_keys(hyp)
    res = np.nan_to_num(np.asarray(results, dtype=np.float64).ravel()[:NR], nan=0.0, posinf=0.0, neginf=0.0)
    if res.size != NR:
        raise ValueError(f"results must hold {NR} values ({', '.join(RESULT_NAMES)}), got {res.size}")
    row = np.array([[_as_written(v) for v in (*res, *(float(hyp[k]) for k in keys))]])
    if path.is_file() and path.stat().st_size:
        old = read_evolve(path, keys=keys)
        if old.keys != keys:
            raise EvolveError(f"{path}: its columns ({', '.join(old.keys)}) differ from this hyp's evolvable keys "
                              f"({', '.join(keys)}); evolve into another folder")
        row = np.concatenate([old.rows, row], 0)
    rows = np.unique(row, axis=0)
    table = EvolveTable(keys, rows)
    table.rows = rows[np.argsort(-table.fitness, kind="stable")]
    write_evolve(path, table)
    return table


def best_hyp(table: EvolveTable, base: dict) -> tuple[dict, np.ndarray]:
    """The fittest row as a full hyp (``base`` for the keys that do not evolve) and its 7 results."""
    i = int(np.argmax(table.fitness))
    return {**base, **table.hyp(i)}, table.rows[i, :NR]


def write_evolved_yaml(path: PathLike, hyp: dict, results: Sequence[float], generations: int) -> Path:
    """hyp_evolved.yaml: a comment header (generations, metrics) and the full hyp, loadable by ``--hyp``."""
    plain = {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in hyp.items() if k != "base"}
    metrics = " ".join(f"{n}={float(v):.4g}" for n, v in zip(RESULT_NAMES, results))
    text = (f"# Hyperparameter evolution results\n# Generations: {generations}\n# Metrics: {metrics}\n"
            f"# Train with: python train.py --hyp {Path(path).name}\n\n")
    return write_text(path, text + yaml.safe_dump(plain, sort_keys=False))


# --------------------------------------------------------------------------- plot
def _density(x: np.ndarray, y: np.ndarray, n: int = 20) -> np.ndarray:
    """Per-point count of its cell in an n x n 2-D histogram (colours dense regions, as YOLOv7's hist2d)."""
    if len(x) < 2:
        return np.ones(len(x))
    edges = [np.linspace(v.min(), v.max() + 1e-12, n) for v in (x, y)]
    h, xe, ye = np.histogram2d(x, y, edges)
    xi = np.clip(np.digitize(x, xe) - 1, 0, h.shape[0] - 1)
    yi = np.clip(np.digitize(y, ye) - 1, 0, h.shape[1] - 1)
    return np.log(h[xi, yi] + 1)


def plot_evolve(evolve_txt: PathLike, out: Optional[PathLike] = None, keys: Optional[Sequence[str]] = None) -> Path:
    """evolve.png beside evolve.txt: fitness against each hyperparameter, best value marked and in the title."""
    table = read_evolve(evolve_txt, keys=keys)
    if not len(table.rows):
        raise EvolveError(f"{evolve_txt}: no generations to plot")
    f = table.fitness
    best = int(np.argmax(f))
    cols = 5
    nrows = max(1, math.ceil(len(table.keys) / cols))
    fig = _figure(figsize=(10, 2 * nrows), tight_layout=True)
    for i, k in enumerate(table.keys):
        y = table.rows[:, NR + i]
        ax = fig.add_subplot(nrows, cols, i + 1)
        ax.scatter(y, f, c=_density(y, f), cmap="viridis", alpha=0.8, edgecolors="none")
        ax.plot(y[best], f[best], "k+", markersize=15)
        ax.set_title(f"{k} = {y[best]:.3g}", fontdict={"size": 9})
        ax.tick_params(labelsize=7)
        if i % cols:
            ax.set_yticks([])
        else:
            ax.set_ylabel("fitness", fontsize=8)
    return _save_figure(fig, Path(out) if out else Path(evolve_txt).with_name("evolve.png"), dpi=150)


__all__ = ["META", "RESULT_NAMES", "EvolveError", "EvolveTable", "append_evolve", "best_hyp", "constrain",
           "evolvable_keys", "mutate", "next_hyp", "plot_evolve", "read_evolve", "select_parent",
           "write_evolve", "write_evolved_yaml"]
