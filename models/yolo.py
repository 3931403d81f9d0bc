"""YOLOv7 detection heads (Detect, IDetect), the yaml model builder (parse_model) and Model.

The yaml format is YOLOv7's: ``nc``, ``depth_multiple``, ``width_multiple``, ``anchors``, and
``backbone`` / ``head`` lists of ``[from, number, module, args]``. Nothing in a yaml is evaluated:
module names resolve through :data:`MODULES`, arguments are parsed with ``ast`` into numbers,
None, booleans, strings, ``nc`` / ``anchors`` and a whitelist of activation constructors.
"""
from __future__ import annotations

import ast
import copy
import math
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn
import yaml

from models.common import (MP, SP, SPPCSPC, Concat, Conv, ImplicitA, ImplicitM, MobileOne, MobileOneBlock, RepConv,
                           SEBlock)
from utils.autoanchor import check_anchor_order
from utils.general import LOGGER, make_divisible
from utils.torch_utils import initialize_weights, model_info, scale_img

ROOT = Path(__file__).resolve().parents[1]


class Detect(nn.Module):
    """YOLO detection head: one 1x1 conv per level producing ``na * (nc + 5)`` channels.

    ``anchors`` (nl, na, 2) buffer in stride units, ``anchor_grid`` (nl, 1, na, 1, 1, 2) buffer in
    pixels, ``stride`` tensor set by :class:`Model`. Train mode returns the raw list of
    (B, na, ny, nx, no) tensors; eval mode returns ``(decoded (B, N, no), raw)``, decoded =
    pixel (cx, cy, w, h), objectness and class scores, all sigmoided. Setting the class attribute
    ``export = True`` makes eval mode return only the decoded tensor (ONNX / TorchScript export).
    """

    export = False  # eval forward returns only the decoded tensor when True

    def __init__(self, nc: int = 80, anchors: Any = (), ch: Any = ()):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.stride = None  # set by Model
        a = torch.tensor(anchors).float().view(self.nl, -1, 2)
        self.register_buffer("anchors", a)
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)

    def _head(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.m[i](x)

    def forward(self, x: list[torch.Tensor]):
        x = list(x)
        z = []
        for i in range(self.nl):
            x[i] = self._head(i, x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                z.append(self._decode(i, x[i]))
        if self.training:
            return x
        out = torch.cat(z, 1)
        return out if self.export else (out, x)

    def _decode(self, i: int, p: torch.Tensor) -> torch.Tensor:
        bs, _, ny, nx, _ = p.shape
        yv, xv = torch.meshgrid(torch.arange(ny, device=p.device, dtype=p.dtype),
                                torch.arange(nx, device=p.device, dtype=p.dtype), indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
        s = self.stride[i].to(p.dtype)  # 0-dim tensor: a constant in traces, no Python float
        y = p.sigmoid()
        xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * s
        wh = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i].to(p.dtype)
        y = torch.cat((xy, wh, y[..., 4:]), -1)
        return y.view(bs, -1, self.no)

    def fuse(self) -> "Detect":
        """Nothing to fold in a plain Detect head (kept for a uniform interface)."""
        return self


class IDetect(Detect):
    """Detect with YOLOR implicit layers: ``m[i](ia[i](x))`` scaled by ``im[i]``.

    ``fuse()`` folds ImplicitA into the conv bias and ImplicitM into weight and bias, then removes
    ``ia`` / ``im``.
    """

    def __init__(self, nc: int = 80, anchors: Any = (), ch: Any = ()):
        super().__init__(nc, anchors, ch)
        self.ia = nn.ModuleList(ImplicitA(x) for x in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)

    def _head(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.ia is None:
            return self.m[i](x)
        return self.im[i](self.m[i](self.ia[i](x)))

    @torch.no_grad()
    def fuse(self) -> "IDetect":
        """Fold the implicit layers into the convs; idempotent."""
        if self.ia is None:
            return self
        for i, conv in enumerate(self.m):
            w = conv.weight.double()  # (c2, c1, 1, 1)
            b = conv.bias.double()
            a = self.ia[i].implicit.double().reshape(-1)  # (c1,)
            mul = self.im[i].implicit.double().reshape(-1)  # (c2,)
            b = (b + w.reshape(w.shape[0], -1) @ a) * mul
            w = w * mul.reshape(-1, 1, 1, 1)
            conv.weight.copy_(w.to(conv.weight.dtype))
            conv.bias.copy_(b.to(conv.bias.dtype))
        self.ia = None
        self.im = None
        return self


# ----------------------------------------------------------------------------- yaml parsing
#: yaml module name -> class. Only these names can appear in a model yaml.
MODULES: dict[str, type] = {
    "Conv": Conv, "Concat": Concat, "MP": MP, "SP": SP, "SPPCSPC": SPPCSPC, "RepConv": RepConv,
    "ImplicitA": ImplicitA, "ImplicitM": ImplicitM, "SEBlock": SEBlock,
    "MobileOneBlock": MobileOneBlock, "MobileOne": MobileOne, "Detect": Detect, "IDetect": IDetect,
    "nn.Conv2d": nn.Conv2d, "nn.BatchNorm2d": nn.BatchNorm2d, "nn.Upsample": nn.Upsample,
    "nn.MaxPool2d": nn.MaxPool2d, "nn.Identity": nn.Identity,
}

#: activation constructors allowed as arguments, e.g. ``nn.LeakyReLU(0.1)``.
ACTIVATIONS: dict[str, type] = {
    "LeakyReLU": nn.LeakyReLU, "SiLU": nn.SiLU, "ReLU": nn.ReLU, "ReLU6": nn.ReLU6, "Identity": nn.Identity,
    "Hardswish": nn.Hardswish, "Mish": nn.Mish, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "GELU": nn.GELU,
}

_CONV_LIKE = (nn.Conv2d, Conv, SPPCSPC, RepConv)
_BARE_WORD = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class ModelConfigError(ValueError):
    """A model yaml is malformed or asks for something that is not allowed."""


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


def _resolve_module(m: Any, where: str) -> type:
    if not isinstance(m, str):
        raise ModelConfigError(f"{where}: module must be a name, got {m!r}")
    key = m.strip()
    if key.startswith("torch.nn."):
        key = key[len("torch."):]
    if key not in MODULES:
        raise ModelConfigError(f"{where}: unknown module {m!r}; allowed: {', '.join(MODULES)}")
    return MODULES[key]


def _check_from(f: Any, i: int, where: str) -> None:
    fs = [f] if isinstance(f, int) and not isinstance(f, bool) else f
    if not isinstance(fs, list) or not fs or not all(isinstance(x, int) and not isinstance(x, bool) for x in fs):
        raise ModelConfigError(f"{where}: 'from' must be an int or a list of ints, got {f!r}")
    for x in fs:
        j = i + x if x < 0 else x
        if not (0 <= j < i or (i == 0 and x == -1)):
            raise ModelConfigError(f"{where}: 'from' index {x} does not refer to an earlier layer")


def parse_model(d: dict, ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    """Build the layers of a YOLOv7 yaml dict; returns ``(nn.Sequential, save_indices)``.

    ``ch`` holds the input channel count(s), e.g. ``[3]``.
    """
    for k in ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head"):
        if k not in d:
            raise ModelConfigError(f"model yaml: missing key '{k}'")
    nc, gd, gw, anchors = d["nc"], d["depth_multiple"], d["width_multiple"], d["anchors"]
    if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
        raise ModelConfigError(f"model yaml: 'nc' must be a positive integer, got {nc!r}")
    for name, v in (("depth_multiple", gd), ("width_multiple", gw)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise ModelConfigError(f"model yaml: '{name}' must be a positive number, got {v!r}")
    if isinstance(anchors, list):
        if not anchors or not all(isinstance(a, list) and a and len(a) % 2 == 0
                                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in a)
                                  for a in anchors) or len({len(a) for a in anchors}) != 1:
            raise ModelConfigError(f"model yaml: 'anchors' must be equal-length lists of w,h pairs, got {anchors!r}")
        na = len(anchors[0]) // 2
    elif isinstance(anchors, int) and not isinstance(anchors, bool) and anchors > 0:
        na = anchors
    else:
        raise ModelConfigError(f"model yaml: 'anchors' must be a list of lists or a positive int, got {anchors!r}")
    if not isinstance(d["backbone"], list) or not isinstance(d["head"], list):
        raise ModelConfigError("model yaml: 'backbone' and 'head' must be lists of [from, number, module, args]")
    no = na * (nc + 5)
    names = {"nc": nc, "anchors": anchors}

    LOGGER.info(f"\n{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}")
    layers, save, c2 = [], [], ch[-1]
    for i, layer in enumerate(d["backbone"] + d["head"]):
        where = f"model yaml layer {i}"
        if not isinstance(layer, list) or len(layer) != 4:
            raise ModelConfigError(f"{where}: expected [from, number, module, args], got {layer!r}")
        f, n, m, args = layer
        _check_from(f, i, where)
        m = _resolve_module(m, where)
        if not isinstance(args, list):
            raise ModelConfigError(f"{where}: args must be a list, got {args!r}")
        args = [parse_arg(a, where, names) for a in args]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ModelConfigError(f"{where}: 'number' must be a positive integer, got {n!r}")
        n = max(round(n * gd), 1) if n > 1 else n

        try:
            if m in _CONV_LIKE:
                c1, c2 = ch[f], args[0]
                if c2 != no:
                    c2 = make_divisible(c2 * gw, 8)
                args = [c1, c2, *args[1:]]
                if m is SPPCSPC:
                    args.insert(2, n)
                    n = 1
            elif m in (MobileOneBlock, MobileOne):
                c1, c2 = ch[f], args[0]
                args = [c1, c2, *args[1:]]
            elif m is nn.BatchNorm2d:
                args = [ch[f]]
                c2 = ch[f]
            elif m is Concat:
                c2 = sum(ch[x] for x in f)
            elif m in (Detect, IDetect):
                args.append([ch[x] for x in f])
                if isinstance(args[1], int):  # number of anchors: placeholders, set by autoanchor
                    args[1] = [list(range(args[1] * 2))] * len(f)
            elif m in (ImplicitA, ImplicitM, SEBlock):
                c2 = ch[f]
                args = [c2, *args]
            else:
                c2 = ch[f]
            m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        except ModelConfigError:
            raise
        except (TypeError, ValueError, IndexError, KeyError, RuntimeError) as e:
            raise ModelConfigError(f"{where}: cannot build {getattr(m, '__name__', m)} with args {args!r}: {e}") from e

        t = f"nn.{m.__name__}" if m.__module__.startswith("torch") else m.__name__
        np_ = sum(x.numel() for x in m_.parameters())
        m_.i, m_.f, m_.type, m_.np = i, f, t, np_
        LOGGER.info(f"{i:>3}{str(f):>18}{n:>3}{np_:10.0f}  {t:<40}{str(args):<30}")
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), sorted(set(save))


def load_model_yaml(cfg: Union[str, Path]) -> dict:
    """Read a model yaml (a path, or a file name found under cfg/training/) safely."""
    p = Path(cfg)
    if not p.is_file():
        for cand in (ROOT / p, ROOT / "cfg" / "training" / p.name):
            if cand.is_file():
                p = cand
                break
        else:
            raise FileNotFoundError(f"model yaml {cfg} not found (also looked in {ROOT / 'cfg' / 'training'})")
    try:
        with open(p, encoding="utf-8") as fh:
            d = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        raise ModelConfigError(f"{p}: not valid yaml: {e}") from e
    if not isinstance(d, dict):
        raise ModelConfigError(f"{p}: expected a mapping at the top level")
    d["yaml_file"] = p.name
    return d


class Model(nn.Module):
    """A YOLOv7 model built from a yaml file or dict.

    Attributes: ``model`` (nn.Sequential of layers with ``.i``, ``.f``, ``.type``, ``.np``), ``yaml``
    (dict), ``save``, ``stride`` (tensor [8, 16, 32]), ``names``, ``nc``, ``hyp`` (dict, set by
    training), ``gr`` (IoU-to-objectness ratio, 1.0).
    """

    def __init__(self, cfg: Union[str, Path, dict] = "yolov7-tiny-ms0.yaml", ch: int = 3, nc: Optional[int] = None,
                 anchors: Any = None):
        super().__init__()
        if isinstance(cfg, dict):
            self.yaml = copy.deepcopy(cfg)
            where = "model yaml"
        else:
            self.yaml = load_model_yaml(cfg)
            where = self.yaml["yaml_file"]
        self.yaml_file = self.yaml.get("yaml_file", where)
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc is not None and nc != self.yaml.get("nc"):
            LOGGER.info(f"Overriding {where} nc={self.yaml.get('nc')} with nc={nc}")
            self.yaml["nc"] = int(nc)
        if anchors is not None:
            LOGGER.info(f"Overriding {where} anchors with anchors={anchors}")
            self.yaml["anchors"] = round(anchors) if isinstance(anchors, (int, float)) else anchors
        try:
            self.model, self.save = parse_model(copy.deepcopy(self.yaml), ch=[ch])
        except ModelConfigError as e:
            if where == "model yaml":
                raise
            raise ModelConfigError(f"{where}: {e}") from None
        self.nc = self.yaml["nc"]
        self.names = [str(i) for i in range(self.nc)]
        self.hyp: dict = {}
        self.gr = 1.0

        m = self.model[-1]
        if isinstance(m, Detect):
            self._compute_strides(m, ch)
            self.stride = m.stride
            self._initialize_biases()
        else:
            self.stride = torch.tensor([32.0])
        initialize_weights(self)

    @torch.no_grad()
    def _compute_strides(self, det: Detect, ch: int, s: int = 128) -> None:
        """Strides from a small probe forward in eval mode (BatchNorm statistics stay untouched).

        ``s`` only needs to be a multiple of the largest stride; 128 keeps model building cheap.
        """
        was_training = self.training
        det.stride = torch.ones(det.nl)  # placeholder for the probe's decoding
        self.eval()
        try:
            raw = self._forward_once(torch.zeros(1, ch, s, s))[1]
        finally:
            self.train(was_training)
        det.stride = torch.tensor([s / x.shape[-2] for x in raw])
        check_anchor_order(det)
        det.anchors /= det.stride.view(-1, 1, 1)

    def forward(self, x: torch.Tensor, augment: bool = False, profile: bool = False):
        if augment:
            return self._forward_augment(x)
        return self._forward_once(x, profile)

    def _forward_once(self, x: torch.Tensor, profile: bool = False):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            if profile:
                from utils.torch_utils import time_synchronized
                t = time_synchronized()
                for _ in range(10):
                    m(x)
                LOGGER.info(f"{(time_synchronized() - t) * 100:10.1f}ms {m.type}")
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def _forward_augment(self, x: torch.Tensor):
        """Test-time augmentation (YOLOv7): scales 1, 0.83, 0.67 with a left-right flip on the middle."""
        img_size = x.shape[-2:]
        gs = int(self.stride.max())
        y = []
        for si, fi in zip((1, 0.83, 0.67), (None, 3, None)):
            xi = scale_img(x.flip(fi) if fi else x, si, gs=gs)
            out = self._forward_once(xi)
            yi = out[0] if isinstance(out, tuple) else out
            yi = yi.clone()
            yi[..., :4] /= si
            if fi == 2:
                yi[..., 1] = img_size[0] - yi[..., 1]
            elif fi == 3:
                yi[..., 0] = img_size[1] - yi[..., 0]
            y.append(yi)
        return torch.cat(y, 1), None

    def _initialize_biases(self, cf: Optional[torch.Tensor] = None) -> None:
        """YOLOv7 prior biases: objectness ~8 objects per 640 image, classes ~0.6 / nc."""
        m = self.model[-1]
        with torch.no_grad():
            for mi, s in zip(m.m, m.stride):
                b = mi.bias.view(m.na, -1)
                b[:, 4] += math.log(8 / (640 / float(s)) ** 2)
                b[:, 5:] += math.log(0.6 / (m.nc - 0.99)) if cf is None else torch.log(cf / cf.sum())

    def _apply(self, fn):
        # keep the head's plain-tensor stride on the same device / dtype as the model
        self = super()._apply(fn)
        m = self.model[-1]
        if isinstance(m, Detect) and m.stride is not None:
            m.stride = fn(m.stride)
            self.stride = m.stride
        return self

    @torch.no_grad()
    def fuse(self) -> "Model":
        """Re-parameterize MobileOneBlock / RepConv, fold Conv+BN and IDetect implicits; idempotent."""
        LOGGER.info("Fusing layers... ")
        for m in list(self.model.modules()):
            if isinstance(m, MobileOneBlock):
                m.reparameterize()
            elif isinstance(m, MobileOne):
                m.inference_mode = True
            elif isinstance(m, RepConv):
                m.fuse_repvgg_block()
            elif type(m) is Conv:
                m.fuse()
            elif isinstance(m, Detect):
                m.fuse()
        self.info()
        return self

    def is_fused(self) -> bool:
        """True when no BatchNorm2d is left (the model has been fused)."""
        return not any(isinstance(m, nn.BatchNorm2d) for m in self.modules())

    def info(self, verbose: bool = False, img_size: int = 640) -> dict:
        """Log layers, parameters and GFLOPs (at ``img_size``); return them as a dict."""
        return model_info(self, verbose, img_size)
