"""Class names, the one normaliser: a list, a tuple or an ``{id: name}`` mapping (ids may be strings, as json and
yaml give them) become names in id order; no names become ``'0'..'nc-1'``.

Checking a user's dataset yaml strictly (contiguous ids, ``nc`` agreeing) is :func:`utils.data.config.parse_names`;
everything that only reads names (checkpoints, model files, metrics, plots) uses these.
"""
from __future__ import annotations

from typing import Any, Optional


def names_list(names: Any, nc: Optional[int] = None) -> list[str]:
    """Names in id order as strings; ``'0'..'nc-1'`` when ``names`` is empty or None."""
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    if names:
        return [str(n) for n in names]
    return [str(i) for i in range(int(nc or 0))]


def names_dict(names: Any) -> dict[int, str]:
    """Names as ``{index: name}`` from a list, a mapping (keys may be strings) or None (empty)."""
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    return dict(enumerate(names_list(names)))
