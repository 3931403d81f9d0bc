"""Dataset yaml parsing and path resolution (the one home of ``check_dataset``).

A dataset yaml (YOLOv7 format) names ``train``, ``val`` and optionally ``test`` splits (a
folder of images, a ``.txt`` list of image paths, or a list of either), ``nc`` and ``names``
(a list, or an ``{id: name}`` mapping). Optional keys:

- ``path``: a root the split paths are relative to. A relative ``path`` is taken relative to
  the yaml's own folder (so a yaml keeps working wherever it is run from), falling back to
  the working directory when that does not exist.
- ``builtin: shapes``: a dataset the project generates itself (``utils.data.shapes.ensure_shapes``)
  under ``path`` before the paths are checked.
- ``coco: true`` (COCO category ids / pycocotools evaluation), ``coco_json`` (a ground-truth
  json, resolved like the splits), ``category_ids`` (class index -> dataset category id).

Without ``path``, each relative split path is tried relative to the yaml's folder first and
then the working directory (YOLOv7's own yamls use cwd-relative paths such as
``../coco/images/train2017``); the first that exists wins. The yaml never runs code: any
``download`` key is shown to the user, not executed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Union

from utils.data.shapes import ensure_shapes
from utils.log import LOGGER
from utils.names import names_list
from utils.safe_yaml import load_yaml

SPLITS = ("train", "val", "test")
DataArg = Union[str, Path, dict]


class DatasetConfigError(ValueError):
    """A dataset yaml that cannot be used (the message names the yaml and the key)."""


MAX_CLASSES = 100_000  # a bound on 'nc' so that a typo cannot allocate a billion class names


def parse_names(names: Any, nc: Any, where: str) -> tuple[int, list[str]]:
    """Normalise ``names`` (list or {id: name}) and ``nc`` and check that they agree."""
    if nc is not None:
        if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
            raise DatasetConfigError(f"{where}: 'nc' must be a positive integer, got {nc!r}")
        if nc > MAX_CLASSES:
            raise DatasetConfigError(f"{where}: 'nc' is {nc}, more than the {MAX_CLASSES} classes a detector "
                                     f"here can have")
    if names is None:
        if nc is None:
            raise DatasetConfigError(f"{where}: needs 'names' (list or {{id: name}}) and/or 'nc'")
        LOGGER.warning(f"WARNING: {where}: no 'names' given, using class0..class{nc - 1}")
        return nc, [f"class{i}" for i in range(nc)]
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DatasetConfigError(f"{where}: 'names' mapping keys must be integer class ids") from None
        if keys != list(range(len(keys))):
            raise DatasetConfigError(f"{where}: 'names' mapping ids must be contiguous 0..{len(keys) - 1}, "
                                     f"got {keys}")
    elif not isinstance(names, (list, tuple)):
        raise DatasetConfigError(f"{where}: 'names' must be a list or an {{id: name}} mapping")
    names = names_list(names)
    if nc is None:
        nc = len(names)
    if len(names) != nc:
        raise DatasetConfigError(f"{where}: 'nc' is {nc} but 'names' has {len(names)} entries")
    return nc, names


def _resolve_one(p: Any, bases: list[Path], where: str, key: str) -> str:
    """Resolve one split entry against candidate base folders: the first that exists wins."""
    if not isinstance(p, (str, Path)):
        raise DatasetConfigError(f"{where}: '{key}' entries must be paths, got {p!r}")
    p = Path(str(p)).expanduser()
    if p.is_absolute():
        return str(p)
    candidates = [(b / p).resolve() for b in bases]
    for c in candidates:
        if c.exists():
            return str(c)
    return str(candidates[0])


def _read_dataset(data: DataArg) -> tuple[dict, Union[str, None]]:
    """(a copy of the yaml's mapping, the yaml's absolute path or None for a dict)."""
    if isinstance(data, dict):
        return dict(data), data.get("yaml_file")
    d = load_yaml(data, "dataset yaml", mapping=False)
    d = {} if d is None else d
    if not isinstance(d, dict):
        raise DatasetConfigError(f"{data}: expected a mapping at the top level, got {type(d).__name__}")
    return d, str(Path(data).resolve())


def _root(path: Any, yaml_dir: Union[Path, None]) -> Union[Path, None]:
    """The absolute dataset root for a ``path`` entry (relative: to the yaml's folder, else the cwd)."""
    if not path:
        return None
    r = Path(str(path)).expanduser()
    if not r.is_absolute():
        cands = ([yaml_dir / r] if yaml_dir else []) + [Path.cwd() / r]
        r = next((c for c in cands if c.exists()), cands[0])
    return r.resolve()


def _resolve_splits(d: dict, bases: list[Path], where: str, require: set[str]) -> None:
    """Make every split absolute (in place); splits in ``require`` that are given must exist."""
    for key in ("train", "val"):
        if not d.get(key):
            raise DatasetConfigError(f"{where}: missing '{key}' split")
    for key in SPLITS:
        v = d.get(key)
        if not v:
            d[key] = None
            continue
        if isinstance(v, (list, tuple)):
            d[key] = [_resolve_one(x, bases, where, key) for x in v]
            paths = d[key]
        else:
            d[key] = _resolve_one(v, bases, where, key)
            paths = [d[key]]
        missing = [p for p in paths if not Path(p).exists()] if key in require else []
        if missing:
            hint = ""
            if d.get("download"):
                hint = " (this yaml has download instructions: read its 'download' entry / comments)"
            raise DatasetConfigError(f"{where}: '{key}' split not found: {', '.join(missing)}{hint}")


def _category_ids(cids: Any, nc: int, where: str) -> list[int]:
    """``category_ids`` (list, or {class index: id}) as a list of nc integers."""
    try:
        if isinstance(cids, dict):
            cids = [cids[k] for k in sorted(cids, key=int)]
        if not isinstance(cids, (list, tuple)):
            raise TypeError(type(cids).__name__)
        ids = [int(c) for c in cids]
    except (TypeError, ValueError) as e:
        raise DatasetConfigError(f"{where}: 'category_ids' must be a list of integers ({e})") from None
    if len(ids) != nc:
        raise DatasetConfigError(f"{where}: 'category_ids' has {len(ids)} entries, nc is {nc}")
    return ids


def check_dataset(data: DataArg, require: Iterable[str] = SPLITS) -> dict:
    """Load and validate a dataset yaml (path or dict); return it with absolute split paths.

    Returns the yaml's dict plus: ``train``/``val``/``test`` as absolute path strings (or lists
    of them; ``test`` may be None), ``nc`` (int), ``names`` (list[str]), ``yaml_file`` (str or
    None), ``path`` (absolute root, or None). Splits named in ``require`` that are given must
    exist; ``train`` and ``val`` must be given. Errors name the yaml and the key.
    """
    d, yaml_file = _read_dataset(data)
    where = str(yaml_file) if yaml_file else "dataset dict"
    yaml_dir = Path(yaml_file).parent if yaml_file else None
    nc, names = parse_names(d.get("names"), d.get("nc"), where)
    d["nc"], d["names"], d["yaml_file"] = nc, names, yaml_file
    root = _root(d.get("path"), yaml_dir)
    d["path"] = str(root) if root is not None else None

    builtin = d.get("builtin")
    if builtin:
        if builtin != "shapes":
            raise DatasetConfigError(f"{where}: unknown 'builtin' dataset {builtin!r} (known: shapes)")
        if root is None:
            raise DatasetConfigError(f"{where}: 'builtin: shapes' needs a 'path' to generate it under")
        ensure_shapes(root)

    bases = [root] if root is not None else [b for b in (yaml_dir, Path.cwd()) if b is not None]
    _resolve_splits(d, bases, where, set(require))
    if d.get("coco_json"):
        d["coco_json"] = _resolve_one(d["coco_json"], bases, where, "coco_json")
    if d.get("category_ids") is not None:
        d["category_ids"] = _category_ids(d["category_ids"], nc, where)
    d["coco"] = bool(d.get("coco", False))
    return d
