"""The one yaml reader for config files (model, dataset, hyp, tracker yamls): safe and bounded.

``yaml.SafeLoader`` only (a yaml never runs code), a size cap on the file (``MAX_YAML_BYTES``) and a budget on the
nodes after aliases are expanded (``MAX_YAML_NODES``, so a billion-laughs file is refused before it is built).
Errors are :class:`YamlError`, one line naming the file (and line where yaml knows it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Union

import yaml


class YamlError(yaml.YAMLError, ValueError):
    """A yaml file that cannot be read safely (the message names the file, and the line when known)."""


MAX_YAML_BYTES = 4 << 20  # config yamls are a few KB; a bigger file is not a config
MAX_YAML_NODES = 1_000_000  # scalars + lists + mappings after aliases are expanded


def _expanded_size(root: Any, children: Callable[[Any], Iterable[Any]], limit: int) -> int:
    """Number of nodes of ``root`` with every shared reference expanded, stopping once over ``limit``.

    Sizes are memoised per object, so a 1 KB "billion laughs" graph costs a few steps, not 10^9.
    Raises ValueError for a structure that contains itself (recursive alias).
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        k = id(node)
        if finished:
            active.discard(k)
            sizes[k] = 1 + sum(sizes[id(c)] for c in children(node))
            if sizes[k] > limit:
                return sizes[k]
            continue
        if k in sizes:
            continue
        if k in active:
            raise ValueError("it refers to itself (recursive alias)")
        active.add(k)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _node_children(node: yaml.Node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    return []


def _data_children(obj: Any) -> list:
    if isinstance(obj, dict):
        return [x for kv in obj.items() for x in kv]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    return []


def check_data_size(obj: Any, where: str, max_nodes: int = MAX_YAML_NODES) -> None:
    """Refuse plain data (e.g. a checkpoint's ``cfg``) whose shared references expand past ``max_nodes``."""
    try:
        n = _expanded_size(obj, _data_children, max_nodes)
    except ValueError as e:
        raise YamlError(f"{where}: refused: {e}") from None
    if n > max_nodes:
        raise YamlError(f"{where}: refused: expands to more than {max_nodes} entries "
                        f"(nested references, a 'billion laughs' structure?)")


def parse_yaml(text: str, where: str, max_nodes: int = MAX_YAML_NODES) -> Any:
    """Safe-load yaml ``text`` (no code, no tags) after checking its expanded size; errors name ``where``."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            n = _expanded_size(node, _node_children, max_nodes)
        except ValueError as e:
            raise YamlError(f"{where}: refused: {e}") from None
        if n > max_nodes:
            raise YamlError(f"{where}: refused: its aliases expand to more than {max_nodes} nodes "
                            f"(nested anchors/aliases, a 'billion laughs' file?)")
        return loader.construct_document(node)
    except YamlError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise YamlError(f"{where}{line}: invalid yaml: {what}") from None
    except yaml.YAMLError as e:
        raise YamlError(f"{where}: invalid yaml: {e}") from None
    except RecursionError:
        raise YamlError(f"{where}: refused: nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml(file: Union[str, Path], what: str = "yaml", mapping: bool = True,
              max_bytes: int = MAX_YAML_BYTES, max_nodes: int = MAX_YAML_NODES) -> Any:
    """Read a yaml file safely: the one yaml reader for dataset, hyp and model yamls.

    Safe loader only (no code execution, no python tags); a regular file of at most
    ``max_bytes``; at most ``max_nodes`` nodes once aliases are expanded, checked before
    anything is built; UTF-8 text. ``mapping`` (default) requires a mapping at the top level
    (an empty file gives ``{}``). Raises FileNotFoundError (``<what> not found: <file>``) or
    :class:`YamlError` (a ``yaml.YAMLError`` and a ``ValueError``) naming the file and line.
    """
    file = Path(file)
    if not file.is_file():
        if file.exists():
            raise YamlError(f"{file}: {what} is not a regular file")
        raise FileNotFoundError(f"{what} not found: {file}")
    with open(file, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise YamlError(f"{file}: refused: {what} is larger than {max_bytes >> 20} MiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise YamlError(f"{file}: {what} is not UTF-8 text (byte {e.start})") from None
    data = parse_yaml(text, str(file), max_nodes)
    if mapping:
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise YamlError(f"{file}: expected a mapping at the top level, got {type(data).__name__}")
    return data
