"""Model yamls read safely: the file within its size limits, the top-level keys checked, each layer argument parsed
with ``ast`` into numbers, None, booleans, strings, ``nc`` / ``anchors`` and a whitelist of activation
constructors. Nothing in a yaml is evaluated.

The size limits say what a small yaml file (or a checkpoint's ``cfg``) may make the program build; the builder
that enforces the model-level ones is :func:`models.yolo.parse_model` / :func:`models.yolo.check_model_size`.
"""
from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any, Union

import torch.nn as nn

from utils.safe_yaml import YamlError, load_yaml

ROOT = Path(__file__).resolve().parents[1]


#: activation constructors allowed as arguments, e.g. ``nn.LeakyReLU(0.1)``.
ACTIVATIONS: dict[str, type] = {
    "LeakyReLU": nn.LeakyReLU, "SiLU": nn.SiLU, "ReLU": nn.ReLU, "ReLU6": nn.ReLU6, "Identity": nn.Identity,
    "Hardswish": nn.Hardswish, "Mish": nn.Mish, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "GELU": nn.GELU,
}


# Size limits: what a small yaml file (or a checkpoint's ``cfg``) may make the program build. Each is
# far above the largest shipped model (yolov7.yaml: ~2k yaml nodes, 37.6M parameters, 1280 channels).
MAX_YAML_BYTES = 1 << 20  # a model yaml is a few KB (utils.safe_yaml.load_yaml enforces it)
MAX_YAML_NODES = 100_000  # yaml nodes / cfg items after expanding every alias or shared reference
MAX_LAYERS = 1_000  # backbone + head rows
MAX_CHANNELS = 1 << 15  # output channels of one layer
MAX_BLOCKS = 10_000  # repeats x MobileOne blocks x conv branches, summed over the model
MAX_PARAMS = 1_000_000_000  # parameters, counted on the meta device before anything is allocated
MAX_PROBE_ELEMENTS = 1 << 25  # elements of one layer output in the shape probe
PROBE_SIZE = 128  # input size of the shape probe (a multiple of every stride in use)


class ModelConfigError(ValueError):
    """A model yaml is malformed or asks for something that is not allowed."""


# ----------------------------------------------------------------------------- layer arguments
def _literal(node: ast.AST, where: str, text: str) -> Any:
    """A number / string / None / bool literal (optionally negated), else ModelConfigError."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float))
            and not isinstance(node.operand.value, bool)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    raise ModelConfigError(f"{where}: argument {text!r} is not allowed (only literals inside activations)")


def _parse_activation(node: ast.Call, where: str, text: str) -> nn.Module:
    f = node.func
    if not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "nn"
            and f.attr in ACTIVATIONS):
        raise ModelConfigError(f"{where}: argument {text!r} is not allowed; calls are limited to "
                               f"{', '.join('nn.' + a + '(...)' for a in ACTIVATIONS)}")
    args = [_literal(a, where, text) for a in node.args]
    kwargs = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise ModelConfigError(f"{where}: argument {text!r}: '**' is not allowed")
        kwargs[kw.arg] = _literal(kw.value, where, text)
    try:
        return ACTIVATIONS[f.attr](*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ModelConfigError(f"{where}: argument {text!r} is invalid: {e}") from e


def parse_arg(a: Any, where: str, names: dict[str, Any]) -> Any:
    """Parse one yaml layer argument safely (see module docstring). ``names`` maps nc/anchors."""
    if a is None or isinstance(a, (bool, int, float)):
        return a
    if isinstance(a, (list, tuple)):
        return [parse_arg(x, where, names) for x in a]
    if not isinstance(a, str):
        raise ModelConfigError(f"{where}: argument {a!r} of type {type(a).__name__} is not allowed")
    text = a.strip()
    if text in names:
        return names[text]
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ModelConfigError(f"{where}: argument {a!r} is not a valid argument") from None
    if isinstance(node, ast.Name):
        # a bare word such as 'nearest' stays a string (YOLOv7 keeps strings that do not evaluate)
        return text
    if isinstance(node, ast.Call):
        return _parse_activation(node, where, a)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, where, a) for e in node.elts]
    return _literal(node, where, a)


def _check_from(f: Any, i: int, where: str) -> None:
    fs = [f] if isinstance(f, int) and not isinstance(f, bool) else f
    if not isinstance(fs, list) or not fs or not all(isinstance(x, int) and not isinstance(x, bool) for x in fs):
        raise ModelConfigError(f"{where}: 'from' must be an int or a list of ints, got {f!r}")
    for x in fs:
        j = i + x if x < 0 else x
        if not (0 <= j < i or (i == 0 and x == -1)):
            raise ModelConfigError(f"{where}: 'from' index {x} does not refer to an earlier layer")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_top_level(d: dict) -> tuple[int, float, float, Any, int]:
    """(nc, depth_multiple, width_multiple, anchors, anchors per level) of a model dict, checked."""
    for k in ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head"):
        if k not in d:
            raise ModelConfigError(f"missing key '{k}'")
    nc, gd, gw, anchors = d["nc"], d["depth_multiple"], d["width_multiple"], d["anchors"]
    if not _is_int(nc) or nc < 1:
        raise ModelConfigError(f"'nc' must be a positive integer, got {nc!r}")
    for name, v in (("depth_multiple", gd), ("width_multiple", gw)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < math.inf:
            raise ModelConfigError(f"'{name}' must be a positive number, got {v!r}")
    if isinstance(anchors, list):
        if not anchors or not all(isinstance(a, list) and a and len(a) % 2 == 0
                                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in a)
                                  for a in anchors) or len({len(a) for a in anchors}) != 1:
            raise ModelConfigError(f"'anchors' must be equal-length lists of w,h pairs, got {anchors!r}")
        na = len(anchors[0]) // 2
    elif _is_int(anchors) and anchors > 0:
        na = anchors
    else:
        raise ModelConfigError(f"'anchors' must be a list of lists or a positive int, got {anchors!r}")
    if not isinstance(d["backbone"], list) or not isinstance(d["head"], list):
        raise ModelConfigError("'backbone' and 'head' must be lists of [from, number, module, args]")
    if len(d["backbone"]) + len(d["head"]) > MAX_LAYERS:
        raise ModelConfigError(f"{len(d['backbone']) + len(d['head'])} layers exceed the limit of {MAX_LAYERS}")
    return nc, gd, gw, anchors, na


def load_model_yaml(cfg: Union[str, Path]) -> dict:
    """Read a model yaml (a path, or a file name found under cfg/training/) safely and within limits."""
    p = Path(cfg)
    if not p.is_file():
        for cand in (ROOT / p, ROOT / "cfg" / "training" / p.name):
            if cand.is_file():
                p = cand
                break
        else:
            raise FileNotFoundError(f"model yaml {cfg} not found (also looked in {ROOT / 'cfg' / 'training'})")
    try:  # the project's one safe yaml reader, with the model yaml's limits
        d = load_yaml(p, what="model yaml", max_bytes=MAX_YAML_BYTES, max_nodes=MAX_YAML_NODES)
    except YamlError as e:
        raise ModelConfigError(str(e)) from None
    d["yaml_file"] = p.name
    return d
