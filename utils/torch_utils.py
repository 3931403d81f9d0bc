"""PyTorch helpers: device selection, the BatchNorm fold, fp32 state dicts, model info / FLOPs, EMA,
timing, weight init."""
from __future__ import annotations

import math
import random
import time
from copy import deepcopy
from typing import Any, Iterable, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.batchnorm import ChannelsLastBatchNorm2d, is_channels_last
from utils.checkpoint import float_state_dict
from utils.log import LOGGER


# --------------------------------------------------------------------------- devices / timing
def select_device(device: Union[str, int, torch.device, None] = "", batch_size: Optional[int] = None) -> torch.device:
    """Parse a YOLOv7-style device string: '' (first CUDA device, else CPU), 'cpu', '0', '0,1', 'mps'.

    Raises ValueError for malformed strings and RuntimeError when CUDA devices are requested but
    unavailable, naming the request. With several CUDA devices ``batch_size`` must divide evenly.
    """
    if isinstance(device, torch.device):
        return device
    s = str(device if device is not None else "").strip().lower().replace("cuda:", "").replace(" ", "")
    if s == "cpu":
        LOGGER.info(f"Using torch {torch.__version__} CPU")
        return torch.device("cpu")
    if s == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RuntimeError("--device mps requested but MPS is not available")
        return torch.device("mps")
    if s == "":
        if torch.cuda.is_available():
            ids = [0]
        else:
            LOGGER.info(f"Using torch {torch.__version__} CPU")
            return torch.device("cpu")
    else:
        try:
            ids = [int(x) for x in s.split(",") if x != ""]
        except ValueError:
            raise ValueError(f"--device {device!r} is invalid: use '', 'cpu', 'mps' or CUDA ids such as '0' or '0,1'"
                             ) from None
        if not ids:
            raise ValueError(f"--device {device!r} is invalid: no CUDA id given")
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device!r} requested but CUDA is not available (use --device cpu)")
        n = torch.cuda.device_count()
        bad = [i for i in ids if i < 0 or i >= n]
        if bad:
            raise RuntimeError(f"--device {device!r}: CUDA device(s) {bad} do not exist ({n} visible)")
    if len(ids) > 1 and batch_size is not None and batch_size % len(ids):
        raise ValueError(f"batch-size {batch_size} is not a multiple of the number of GPUs {len(ids)}")
    for i in ids:
        p = torch.cuda.get_device_properties(i)
        LOGGER.info(f"Using torch {torch.__version__} CUDA:{i} ({p.name}, {p.total_memory / 1024 ** 2:.0f}MB)")
    return torch.device(f"cuda:{ids[0]}")


def time_synchronized() -> float:
    """``time.time()`` after waiting for pending CUDA work, for honest timings."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.time()


# --------------------------------------------------------------------------- parallel wrappers
def is_parallel(model: nn.Module) -> bool:
    """True for DataParallel / DistributedDataParallel wrappers."""
    return isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))


def de_parallel(model: nn.Module) -> nn.Module:
    """The wrapped model of a DP/DDP wrapper, else the model itself."""
    return model.module if is_parallel(model) else model


def intersect_dicts(da: dict, db: dict, exclude: Iterable[str] = ()) -> dict:
    """Entries of ``da`` whose key is in ``db`` with the same shape and contains no ``exclude`` string."""
    return {k: v for k, v in da.items()
            if k in db and not any(x in k for x in exclude) and tuple(v.shape) == tuple(db[k].shape)}


# --------------------------------------------------------------------------- init / fusion
def initialize_weights(model: nn.Module) -> None:
    """YOLOv7 initialisation: BatchNorm eps=1e-3, momentum=0.03; in-place activations."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.momentum = 0.03
        elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6)):
            m.inplace = True


def fold_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for exact folding where the device has it (CPU, CUDA), else the tensor's dtype."""
    return torch.float64 if t.device.type in ("cpu", "cuda") else t.dtype


@torch.no_grad()
def fuse_bn_tensor(kernel: torch.Tensor, bn: nn.BatchNorm2d,
                   bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The BatchNorm fold: kernel and bias of one conv equal to ``bn(conv(x))`` in eval mode.

    ``(kernel * gamma / std, (bias - mean) * gamma / std + beta)``, in float64 where the device has
    it (see :func:`fold_dtype`): callers sum branches in that precision and cast back once.
    """
    dt = fold_dtype(kernel)
    std = (bn.running_var.to(dt) + bn.eps).sqrt()
    gamma = bn.weight.to(dt) if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.to(dt) if bn.bias is not None else torch.zeros_like(std)
    t = gamma / std
    b = bias.to(dt) if bias is not None else torch.zeros_like(std)
    return kernel.to(dt) * t.reshape(-1, 1, 1, 1), (b - bn.running_mean.to(dt)) * t + beta


@torch.no_grad()
def conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased Conv2d with ``conv``'s geometry, device, dtype and memory format holding ``weight`` / ``bias``.

    Built on the meta device (no random initialization to overwrite: that was most of the time
    ``fuse()`` took), then given its own copies of the tensors."""
    w = conv.weight
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                    padding_mode=conv.padding_mode, device="meta", dtype=w.dtype)
    fmt = torch.channels_last if is_channels_last(w) else torch.contiguous_format
    new.weight = nn.Parameter(torch.empty_like(w, memory_format=fmt).copy_(weight))
    new.bias = nn.Parameter(torch.empty(conv.out_channels, device=w.device, dtype=w.dtype).copy_(bias))
    return new


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One biased Conv2d equal to ``bn(conv(x))`` in eval mode (same geometry, device and dtype).

    The fold is :func:`fuse_bn_tensor` (float64, cast back once), so it is exact up to one rounding.
    The new conv's parameters are trainable, like every re-parameterized block's.
    """
    return conv_like(conv, *fuse_bn_tensor(conv.weight, bn, conv.bias))


# Workaround for torch 2.14 on CPU (oneDNN, seen with AVX-512): the weight gradient of a dense 1x1 stride-2 conv
# over fewer than 16 input channels corrupts the heap in channels-last (16 and more are fine). Remove it when
# tests/test_torch_utils.py's channels-last step passes with the guard off on a torch that fixes it.
_CL_MIN_SAFE_CHANNELS = 16


def _channels_last_unsafe(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.groups == 1
            and m.in_channels < _CL_MIN_SAFE_CHANNELS)


def to_channels_last(model: nn.Module) -> bool:
    """Put a YOLO ``Model``'s weights in channels-last (NHWC) memory format for training; True if done.

    Convolutions (depthwise ones most) run faster on NHWC tensors on CPU (docs/benchmarks.md),
    and a conv's output follows its weights' format, so images may stay NCHW. One kind of conv keeps
    NCHW weights: a 1x1 stride-2 conv over fewer than 16 channels, whose oneDNN weight gradient is broken
    in NHWC (the MobileOne stem's scale branch). It runs in NCHW only while its input is NCHW too, so
    this is done only where it reads the image (in ``model.model[0]``); a model with one anywhere else
    stays NCHW entirely (logged). BatchNorms become :class:`utils.batchnorm.ChannelsLastBatchNorm2d` (same
    state dict), whose batch statistics are as accurate as NCHW's.
    """
    layers = getattr(model, "model", None)
    first = layers[0] if isinstance(layers, nn.Sequential) and len(layers) else None
    first_ids = {id(m) for m in first.modules()} if first is not None else set()
    unsafe = [(n, m) for n, m in model.named_modules() if _channels_last_unsafe(m)]
    deep = [n for n, m in unsafe if id(m) not in first_ids]
    if deep:
        LOGGER.info(f"channels-last: off ({deep[0]} is a 1x1 stride-2 conv over fewer than "
                    f"{_CL_MIN_SAFE_CHANNELS} channels, which torch's CPU kernel cannot train in NHWC)")
        return False
    model.to(memory_format=torch.channels_last)
    for _, m in unsafe:
        m.to(memory_format=torch.contiguous_format)
    for m in model.modules():  # NCHW-accurate batch statistics (torch's NHWC kernel sums in plain float32)
        if type(m) is nn.BatchNorm2d:
            m.__class__ = ChannelsLastBatchNorm2d
    return True


# --------------------------------------------------------------------------- info / FLOPs
def count_flops(model: nn.Module, img: torch.Tensor) -> int:
    """FLOPs of one forward of ``img`` via ``torch.utils.flop_counter`` (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(img)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_info(model: nn.Module, verbose: bool = False, img_size: Union[int, tuple] = 640) -> dict[str, Any]:
    """Log layers, parameters, gradients and GFLOPs at ``img_size``; return them as a dict.

    FLOPs are counted at the model's stride-aligned size (max stride, at least 32) and scaled to
    ``img_size`` (exact for sizes that are multiples of the stride: every feature map scales with H*W).
    """
    n_p = sum(x.numel() for x in model.parameters())
    n_g = sum(x.numel() for x in model.parameters() if x.requires_grad)
    if verbose:
        LOGGER.info(f"{'layer':>5} {'name':>40} {'gradient':>9} {'parameters':>12} {'shape':>20} "
                    f"{'mu':>10} {'sigma':>10}")
        for i, (name, p) in enumerate(model.named_parameters()):
            name = name.replace("module_list.", "")
            LOGGER.info("%5g %40s %9s %12g %20s %10.3g %10.3g" % (
                i, name, p.requires_grad, p.numel(), list(p.shape), p.mean(), p.std() if p.numel() > 1 else 0.0))
    gflops = None
    try:
        stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") and model.stride is not None else 32
        ch = 3
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            ch = first.in_channels
        p = next(model.parameters())
        img = torch.zeros((1, ch, stride, stride), device=p.device, dtype=p.dtype)
        flops = count_flops(model, img)
        hw = img_size if isinstance(img_size, (list, tuple)) else (img_size, img_size)
        gflops = flops / 1e9 * hw[0] / stride * hw[1] / stride
        fs = f", {gflops:.1f} GFLOPs at {hw[0]}x{hw[1]}"
    except Exception as e:  # FLOPs are informative only; never fail a caller over them
        LOGGER.debug(f"FLOP count failed: {e}")
        fs = ""
    n_layers = len(list(model.modules()))
    LOGGER.info(f"Model Summary: {n_layers} layers, {n_p} parameters, {n_g} gradients{fs}")
    return {"layers": n_layers, "parameters": n_p, "gradients": n_g, "gflops": gflops}


def scale_img(img: torch.Tensor, ratio: float = 1.0, same_shape: bool = False, gs: int = 32) -> torch.Tensor:
    """Resize an image batch by ``ratio`` and pad (value 0.447, as YOLOv7) to a multiple of ``gs``."""
    if ratio == 1.0:
        return img
    h, w = img.shape[2:]
    s = (int(h * ratio), int(w * ratio))
    img = F.interpolate(img, size=s, mode="bilinear", align_corners=False)
    if not same_shape:
        h, w = (math.ceil(x * ratio / gs) * gs for x in (h, w))
    return F.pad(img, [0, w - s[1], 0, h - s[0]], value=0.447)


def copy_attr(a: Any, b: Any, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
    """Copy public attributes of ``b`` to ``a`` (optionally only ``include``, never ``exclude``)."""
    for k, v in b.__dict__.items():
        if (len(include) and k not in include) or k.startswith("_") or k in exclude:
            continue
        setattr(a, k, v)


# --------------------------------------------------------------------------- EMA
def _state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The distinct tensors of ``model.state_dict()`` in its order (parameters, then persistent buffers, module
    by module; a tied weight once), without building the dict: two ``state_dict()`` calls were about half of
    an EMA update of yolov7-tiny-ms0 (docs/benchmarks.md)."""
    seen: set[int] = set()
    out = []
    for m in model.modules():
        persistent = [b for k, b in m._buffers.items() if k not in m._non_persistent_buffers_set]
        for t in [*m._parameters.values(), *persistent]:
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


class ModelEMA:
    """Exponential moving average of a model's state (YOLOv7 / timm ModelEMA semantics).

    decay(updates) = decay * (1 - exp(-updates / 2000)) ramps up from 0 so early, poor weights
    fade quickly. Floating-point entries of the state dict (parameters and BN buffers) are averaged;
    integer buffers (``num_batches_tracked``) are left as they are.

    Checkpoints store ``ema.state_dict()`` (the averaged model's state dict) and ``ema.updates``;
    ``ModelEMA.load_state_dict(sd, updates)`` restores both.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = int(updates)
        self.base_decay = decay
        self.decay = lambda x: decay * (1 - math.exp(-x / 2000))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights of ``model`` into the average."""
        self.updates += 1
        d = self.decay(self.updates)
        pairs = [(e, c) for e, c in zip(_state_tensors(self.ema), _state_tensors(de_parallel(model)), strict=True)
                 if e.dtype.is_floating_point]
        if pairs:  # ema += (1 - d) * (model - ema), all tensors in one fused call
            torch._foreach_lerp_([e for e, _ in pairs], [c if c.dtype == e.dtype else c.to(e.dtype) for e, c in pairs],
                                 1 - d)

    def update_attr(self, model: nn.Module, include: Iterable[str] = (),
                    exclude: Iterable[str] = ("process_group", "reducer")) -> None:
        """Copy plain attributes (names, nc, hyp, stride, ...) from ``model`` to the EMA model."""
        copy_attr(self.ema, de_parallel(model), include, exclude)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's state dict (what checkpoints store under ``ema``)."""
        return self.ema.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], updates: Optional[int] = None) -> None:
        """Restore the average (strictly: every key, same shapes) and, when given, the update counter
        from a checkpoint's ``ema`` / ``updates``; fp16 entries are widened by :func:`float_state_dict`."""
        self.ema.load_state_dict(float_state_dict(state_dict), strict=True)
        if updates is not None:
            self.updates = int(updates)


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed python, numpy and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
