"""YOLOv7 detection heads (Detect, IDetect), the yaml model builder (parse_model) and Model.

The yaml format is YOLOv7's: ``nc``, ``depth_multiple``, ``width_multiple``, ``anchors``, and
``backbone`` / ``head`` lists of ``[from, number, module, args]``. Nothing in a yaml is evaluated:
module names resolve through :data:`MODULES`, arguments are parsed with ``ast`` into numbers,
None, booleans, strings, ``nc`` / ``anchors`` and a whitelist of activation constructors.

A yaml (or a checkpoint's ``cfg``) cannot make the program allocate without bound: the text is read
with alias expansion measured before any object is built (``utils.safe_yaml.load_yaml``), and the model is
first built on the meta device (:func:`check_model_size`: parameters, channels, blocks, a shape probe
that also gives the strides) so an oversized model or layers that do not fit are refused, naming the
layer index and module, before anything is allocated. ``depth_multiple`` / ``width_multiple`` apply
to every layer, MobileOne stages included (block counts and widths).
"""
from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from models.common import (
    MP,
    SP,
    SPPCSPC,
    Concat,
    Conv,
    ImplicitA,
    ImplicitM,
    MobileOneBlock,
    MobileOneStage,
    RepConv,
    SEBlock,
    reparameterize_model,
)
from models.model_yaml import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    MAX_PARAMS,
    MAX_PROBE_ELEMENTS,
    MAX_YAML_NODES,
    PROBE_SIZE,
    ModelConfigError,
    _check_from,
    _check_top_level,
    _is_int,
    load_model_yaml,
    parse_arg,
)
from utils.anchors import check_anchor_order
from utils.boxes import decode_level
from utils.log import LOGGER
from utils.safe_yaml import YamlError, check_data_size
from utils.sizes import make_divisible
from utils.torch_utils import initialize_weights, model_info, scale_img, time_synchronized


def layer_input(m: nn.Module, x: Any, y: list) -> Any:
    """What layer ``m`` takes (YOLOv7's ``from``): the previous layer's output ``x`` for -1, else the saved
    outputs ``y`` of the layers it names (a list when it names several)."""
    if m.f == -1:
        return x
    return y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]


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

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Train-mode outputs (a list of (B, na, ny, nx, no) logits) decoded as eval mode does: (B, N, no)."""
        return torch.cat([self._decode(i, p) for i, p in enumerate(raw)], 1)

    def _decode(self, i: int, p: torch.Tensor) -> torch.Tensor:
        # the stride as a 0-dim tensor: a constant in traces, no Python float
        return decode_level(p, self.anchor_grid[i], self.stride[i].to(p.dtype))

    def reparameterize(self) -> "Detect":
        """Nothing to fold in a plain Detect head (the re-parameterization protocol's no-op)."""
        return self


class IDetect(Detect):
    """Detect with YOLOR implicit layers: ``m[i](ia[i](x))`` scaled by ``im[i]``.

    ``reparameterize()`` folds ImplicitA into the conv bias and ImplicitM into weight and bias, then
    sets ``ia`` / ``im`` to None (the fused state).
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
    def reparameterize(self) -> "IDetect":
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
#: yaml module name -> class. Only these names can appear in a model yaml. ``MobileOne`` is a stage
#: (:class:`MobileOneStage`), the name the original plugin's yamls use.
MODULES: dict[str, type] = {
    "Conv": Conv, "Concat": Concat, "MP": MP, "SP": SP, "SPPCSPC": SPPCSPC, "RepConv": RepConv,
    "ImplicitA": ImplicitA, "ImplicitM": ImplicitM, "SEBlock": SEBlock,
    "MobileOneBlock": MobileOneBlock, "MobileOne": MobileOneStage, "Detect": Detect, "IDetect": IDetect,
    "nn.Conv2d": nn.Conv2d, "nn.BatchNorm2d": nn.BatchNorm2d, "nn.Upsample": nn.Upsample,
    "nn.MaxPool2d": nn.MaxPool2d, "nn.Identity": nn.Identity,
}


_CONV_LIKE = (nn.Conv2d, Conv, SPPCSPC, RepConv)


def _resolve_module(m: Any, where: str) -> tuple[str, type]:
    """(yaml name, class) of a layer's module; the name is what ``m.type`` reports."""
    if not isinstance(m, str):
        raise ModelConfigError(f"{where}: module must be a name, got {m!r}")
    key = m.strip()
    if key.startswith("torch.nn."):
        key = key[len("torch."):]
    if key not in MODULES:
        raise ModelConfigError(f"{where}: unknown module {m!r}; allowed: {', '.join(MODULES)}")
    return key, MODULES[key]


def _read_layer(layer: Any, i: int, names: dict[str, Any], gd: float) -> tuple[Any, int, str, type, list, str]:
    """(from, repeats scaled by depth_multiple, module name, class, parsed args, where) of yaml row ``i``."""
    where = f"layer {i}"
    if not isinstance(layer, list) or len(layer) != 4:
        raise ModelConfigError(f"{where}: expected [from, number, module, args], got {layer!r}")
    f, n, m, args = layer
    name, m = _resolve_module(m, where)
    where = f"layer {i} ({name})"
    _check_from(f, i, where)
    if not isinstance(args, list):
        raise ModelConfigError(f"{where}: args must be a list, got {args!r}")
    args = [parse_arg(a, where, names) for a in args]
    if not _is_int(n) or n < 1:
        raise ModelConfigError(f"{where}: 'number' must be a positive integer, got {n!r}")
    return f, _scale_depth(n, gd), name, m, args, where


def _scale_depth(n: int, gd: float) -> int:
    """YOLOv7's depth rule: counts above 1 scale by depth_multiple (at least 1), a count of 1 stays."""
    return max(round(n * gd), 1) if n > 1 else n


def _channels(c2: Any, gw: float, where: str, exact: bool = False) -> int:
    """Output channels scaled by width_multiple to a multiple of 8 (``exact``: unchanged when
    width_multiple is 1, so MobileOne layers keep Apple's widths as written)."""
    if not _is_int(c2) or c2 < 1:
        raise ModelConfigError(f"{where}: output channels must be a positive integer, got {c2!r}")
    if not (exact and gw == 1):
        c2 = make_divisible(c2 * gw, 8)
    if c2 > MAX_CHANNELS:
        raise ModelConfigError(f"{where}: {c2} output channels (width_multiple {gw}) exceed the limit of "
                               f"{MAX_CHANNELS}")
    return c2


def _mobileone_args(m: type, args: list, c1: int, gd: float, gw: float, where: str) -> tuple[list, int]:
    """MobileOneBlock / MobileOne stage args with width_multiple applied to the output channels and,
    for a stage, depth_multiple to its block count (SE blocks scaled in proportion, rounded up)."""
    c2 = _channels(args[0] if args else None, gw, where, exact=True)
    rest = list(args[1:])
    if m is MobileOneStage:
        nb = rest[0] if rest else 2
        if not _is_int(nb) or nb < 1:
            raise ModelConfigError(f"{where}: number of blocks must be a positive integer, got {nb!r}")
        nb2 = _scale_depth(nb, gd)
        if len(rest) >= 4 and nb2 != nb and _is_int(rest[3]) and rest[3] > 0:
            rest[3] = min(nb2, math.ceil(rest[3] * nb2 / nb))
        rest = [nb2, *rest[1:]]
    return [c1, c2, *rest], c2


def _layer_args(m: type, f: Any, n: int, args: list, ch: list[int], gd: float, gw: float, no: int,
                where: str) -> tuple[list, int, int]:
    """(constructor args, output channels, repeats) of one layer: YOLOv7's table plus MobileOne."""
    c2 = ch[f] if _is_int(f) else 0
    if m in _CONV_LIKE:
        c2 = args[0] if args and args[0] == no else _channels(args[0] if args else None, gw, where)
        args = [ch[f], c2, *args[1:]]
        if m is SPPCSPC:
            args.insert(2, n)
            n = 1
    elif m in (MobileOneBlock, MobileOneStage):
        args, c2 = _mobileone_args(m, args, ch[f], gd, gw, where)
    elif m is nn.BatchNorm2d:
        args = [c2]
    elif m is Concat:
        c2 = sum(ch[x] for x in f)
    elif m in (Detect, IDetect):
        fs = f if isinstance(f, list) else [f]
        args.append([ch[x] for x in fs])
        if _is_int(args[1]):  # number of anchors: placeholders, set by autoanchor
            args[1] = [list(range(args[1] * 2))] * len(fs)
        if len(args[1]) != len(fs):
            raise ModelConfigError(f"{where}: {len(fs)} inputs but {len(args[1])} anchor levels")
    elif m in (ImplicitA, ImplicitM, SEBlock):
        args = [c2, *args]
    return args, c2, n


def _block_count(m: type, args: list, n: int) -> int:
    """Repeats x MobileOne blocks x conv branches of one layer (what makes module count grow)."""
    def arg(k: int, default: int) -> int:
        v = args[k] if len(args) > k else default
        return v if _is_int(v) and v > 0 else 1
    if m is MobileOneStage:
        return n * arg(2, 2) * arg(3, 1)
    if m is MobileOneBlock:
        return n * arg(8, 1)
    return n


def parse_model(d: dict, ch: list[int], device: Union[str, torch.device, None] = None, verbose: bool = True
                ) -> tuple[nn.Sequential, list[int]]:
    """Build the layers of a YOLOv7 yaml dict; returns ``(nn.Sequential, save_indices)``.

    ``ch`` holds the input channel count(s), e.g. ``[3]``. ``device='meta'`` builds the layers without
    allocating memory and logs nothing (:func:`check_model_size`); ``verbose=False`` skips the layer
    table. Errors name the layer and module.
    """
    nc, gd, gw, anchors, na = _check_top_level(d)
    names, no = {"nc": nc, "anchors": anchors}, na * (nc + 5)
    log = verbose and (device is None or torch.device(device).type != "meta")
    if log:
        LOGGER.info(f"\n{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}")
    layers, save, blocks = [], [], 0
    with torch.device(device) if device is not None else contextlib.nullcontext():
        for i, layer in enumerate(d["backbone"] + d["head"]):
            f, n, name, m, args, where = _read_layer(layer, i, names, gd)
            try:
                args, c2, n = _layer_args(m, f, n, args, ch, gd, gw, no, where)
                blocks += _block_count(m, args, n)
                if blocks > MAX_BLOCKS:
                    raise ModelConfigError(f"{where}: more than {MAX_BLOCKS} blocks (repeats x MobileOne blocks "
                                           f"x conv branches, depth_multiple {gd}) in the model")
                m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
            except ModelConfigError:
                raise
            except (TypeError, ValueError, IndexError, KeyError, RuntimeError) as e:
                raise ModelConfigError(f"{where}: cannot build {name} with args {args!r}: {e}") from e
            np_ = sum(x.numel() for x in m_.parameters())
            m_.i, m_.f, m_.type, m_.np = i, f, name, np_
            if log:
                LOGGER.info(f"{i:>3}{str(f):>18}{n:>3}{np_:10.0f}  {name:<40}{str(args):<30}")
            save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
            layers.append(m_)
            if i == 0:
                ch = []
            ch.append(c2)
    return nn.Sequential(*layers), sorted(set(save))


def _without_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by Identity in place: BatchNorm never changes a shape, and its meta
    kernel is by far the slowest part of a shape probe."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            _without_batchnorm(child)
    return module


@torch.no_grad()
def _probe_layers(layers: nn.Sequential, save: list[int], ch: int, s: int = PROBE_SIZE) -> Any:
    """Run a 1 x ch x s x s meta tensor through ``layers`` (detection heads raw), naming the first layer
    whose inputs do not fit it (e.g. a Concat of different sizes) or whose output is too large; returns
    the last layer's output."""
    _without_batchnorm(layers).eval()
    for m in layers:
        if isinstance(m, Detect):
            m.train()
    x, y = torch.zeros(1, ch, s, s, device="meta"), []
    for m in layers:
        x = layer_input(m, x, y)
        try:
            x = m(x)
        except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as e:
            shapes = [tuple(t.shape) for t in x] if isinstance(x, (list, tuple)) else tuple(x.shape)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelConfigError(f"layer {m.i} ({m.type}, from {m.f}): its inputs {shapes} do not fit: "
                                   f"{msg}") from None
        numel = max(t.numel() for t in (x if isinstance(x, (list, tuple)) else [x]))
        if numel > MAX_PROBE_ELEMENTS:
            raise ModelConfigError(f"layer {m.i} ({m.type}): an output of {numel} elements for a {s}x{s} input "
                                   f"exceeds the limit of {MAX_PROBE_ELEMENTS}")
        y.append(x if m.i in save else None)
    return x


def check_model_size(d: dict, ch: int = 3) -> tuple[int, Optional[list[float]]]:
    """Build ``d`` on the meta device (nothing allocated) and refuse it before the real build when it
    has more than :data:`MAX_PARAMS` parameters or its layers do not fit together (a shape probe at
    :data:`PROBE_SIZE` px). Returns (parameter count, strides of the detection levels or None)."""
    if not _is_int(ch) or not 0 < ch * PROBE_SIZE ** 2 <= MAX_PROBE_ELEMENTS:
        raise ModelConfigError(f"input channels 'ch' must be a small positive integer, got {ch!r}")
    layers, save = parse_model(d, [ch], device="meta")
    n = sum(p.numel() for p in layers.parameters())
    if n > MAX_PARAMS:
        raise ModelConfigError(f"{n:,} parameters (from its width/depth multiples, block and channel counts) "
                               f"exceed the limit of {MAX_PARAMS:,}; refused before allocating")
    out = _probe_layers(layers, save, ch)
    strides = [PROBE_SIZE / o.shape[-2] for o in out] if isinstance(layers[-1], Detect) else None
    return n, strides


class Model(nn.Module):
    """A YOLOv7 model built from a yaml file or dict.

    Attributes: ``model`` (nn.Sequential of layers with ``.i``, ``.f``, ``.type``, ``.np``), ``yaml``
    (dict), ``save``, ``stride`` (tensor [8, 16, 32]), ``names``, ``nc``, ``hyp`` (dict, set by
    training), ``gr`` (IoU-to-objectness ratio, 1.0).
    """

    def __init__(self, cfg: Union[str, Path, dict] = "yolov7-tiny-ms0.yaml", ch: int = 3, nc: Optional[int] = None,
                 anchors: Any = None, verbose: bool = True):
        super().__init__()
        if isinstance(cfg, dict):
            where = cfg["yaml_file"] if isinstance(cfg.get("yaml_file"), str) else "model yaml"
            try:  # e.g. a checkpoint's cfg whose shared references would unfold without bound
                check_data_size(cfg, where, MAX_YAML_NODES)
            except YamlError as e:
                raise ModelConfigError(str(e)) from None
            self.yaml = copy.deepcopy(cfg)
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
            _, strides = check_model_size(self.yaml, ch)  # on the meta device: refused before allocating
            self.model, self.save = parse_model(copy.deepcopy(self.yaml), ch=[ch], verbose=verbose)
        except ModelConfigError as e:
            raise ModelConfigError(f"{where}: {e}") from None
        self.nc = self.yaml["nc"]
        self.names = [str(i) for i in range(self.nc)]
        self.hyp: dict = {}
        self.gr = 1.0

        m = self.model[-1]
        if isinstance(m, Detect):
            self._set_strides(m, strides)
            self.stride = m.stride
            self._initialize_biases()
        else:
            self.stride = torch.tensor([32.0])
        initialize_weights(self)

    @torch.no_grad()
    def _set_strides(self, det: Detect, strides: list[float]) -> None:
        """Strides measured by the shape probe of :func:`check_model_size` (probe size / output size
        per level: no forward of the real model, so BatchNorm statistics stay untouched); anchors
        ordered like the strides and converted to stride units."""
        det.stride = torch.tensor(strides)
        check_anchor_order(det)
        det.anchors /= det.stride.view(-1, 1, 1)

    def forward(self, x: torch.Tensor, augment: bool = False, profile: bool = False):
        if augment:
            return self._forward_augment(x)
        return self._forward_once(x, profile)

    def _forward_once(self, x: torch.Tensor, profile: bool = False):
        y = []
        for m in self.model:
            x = layer_input(m, x, y)
            if profile:
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
            if fi == 3:  # undo the left-right flip
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

    def fuse(self, verbose: bool = False) -> "Model":
        """Re-parameterize in place (YOLOv7's name): ``reparameterize_model(self, inplace=True)``
        folds every MobileOneBlock / RepConv / Conv+BN / IDetect implicit; idempotent.
        ``verbose`` logs the fused model's summary (tools that load a model stay quiet by default)."""
        reparameterize_model(self, inplace=True)
        if verbose:
            LOGGER.info("Fusing layers... ")
            self.info()
        return self

    def is_fused(self) -> bool:
        """True when nothing train-time is left: no BatchNorm2d and no unfolded IDetect implicit."""
        return not any(isinstance(m, nn.BatchNorm2d) or (isinstance(m, IDetect) and m.ia is not None)
                       for m in self.modules())

    def info(self, verbose: bool = False, img_size: int = 640) -> dict:
        """Log layers, parameters and GFLOPs (at ``img_size``); return them as a dict."""
        return model_info(self, verbose, img_size)
