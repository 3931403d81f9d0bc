"""Pieces of a training step that train.py composes: optimizer groups, learning-rate schedule and warmup,
layer freezing, precise BatchNorm statistics, and the training checkpoint dict.

Each is a plain function of its inputs (no global state), so tests and benchmarks use the same code
as train.py.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD, Adam

from utils.cli import UserError
from utils.log import LOGGER, colorstr

NBS = 64  # nominal batch size (YOLOv7): gradients are accumulated up to this many images per step;
#           a hyp file may set ``nbs`` to change it (as Ultralytics does)
WARMUP_MIN_ITERS = 100  # warmup lasts at least this many iterations (YOLOv7 uses 1000) ...
WARMUP_MAX_FRACTION = 1 / 3  # ... but never more than this fraction of the whole run
EMA_ATTRS = ["yaml", "nc", "hyp", "gr", "names", "stride", "class_weights"]


def warmup_iterations(warmup_epochs: float, nb: int, epochs: int) -> int:
    """Warmup length in iterations: ``warmup_epochs`` epochs, at least WARMUP_MIN_ITERS, at most 1/3 of the run.

    ``warmup_epochs`` 0 disables warmup.

    YOLOv7 uses ``max(warmup_epochs * nb, 1000)``, which on a small dataset can last the whole
    run (the learning rate would never reach lr0); the cap keeps two thirds of the run at the
    scheduled learning rate.
    """
    if warmup_epochs <= 0:
        return 0
    total = max(1, nb * epochs)
    nw = max(round(warmup_epochs * nb), WARMUP_MIN_ITERS)
    return int(max(1, min(nw, total * WARMUP_MAX_FRACTION)))


def build_optimizer(model: nn.Module, hyp: dict, adam: bool) -> torch.optim.Optimizer:
    """SGD (nesterov) or Adam with YOLOv7's three parameter groups.

    group 0: BatchNorm weights and implicit-knowledge (ImplicitA/M) parameters, no weight decay;
    group 1: all other weights (convolutions, linear layers), with weight decay;
    group 2: biases, no weight decay (their warmup starts from ``warmup_bias_lr``).
    """
    g_bn, g_w, g_b = [], [], []
    seen = set()
    for m in model.modules():
        for p_name, p in m.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p_name == "bias":
                g_b.append(p)
            elif isinstance(m, nn.modules.batchnorm._NormBase) or "implicit" in p_name or \
                    type(m).__name__.startswith("Implicit"):
                g_bn.append(p)
            elif p_name == "weight":
                g_w.append(p)
            else:  # any other free parameter (e.g. anchors-like scales): no decay
                g_bn.append(p)
    # the fused (one-kernel) update, same formula: one pass over the model's hundreds of small tensors instead
    # of a loop of kernels per tensor group (docs/benchmarks.md); devices without a fused kernel keep torch's
    # default
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                   for p in g_bn + g_w + g_b) else {}
    if adam:
        opt = Adam(g_bn, lr=hyp["lr0"], betas=(hyp["momentum"], 0.999), **fused)
    else:
        opt = SGD(g_bn, lr=hyp["lr0"], momentum=hyp["momentum"], nesterov=True, **fused)
    opt.add_param_group({"params": g_w, "weight_decay": hyp["weight_decay"]})
    opt.add_param_group({"params": g_b})
    LOGGER.info(f"{colorstr('optimizer:')} {type(opt).__name__} with parameter groups "
                f"{len(g_bn)} weight (no decay, BN/implicit), {len(g_w)} weight (decay), {len(g_b)} bias")
    return opt


def lr_lambda(epochs: int, lrf: float, linear: bool):
    """LR multiplier per epoch: linear from 1 to lrf, or one-cycle cosine from 1 to lrf."""
    if linear:
        return lambda x: (1 - x / max(epochs - 1, 1)) * (1.0 - lrf) + lrf
    return one_cycle(1, lrf, epochs)


def scale_loss_gains(hyp: dict, nl: int, nc: int, imgsz: int, label_smoothing: float = 0.0) -> dict:
    """YOLOv7's loss gains for ``nl`` detection layers, ``nc`` classes and ``imgsz`` px (the hyp values are
    tuned for 3 layers, 80 classes, 640 px); updates ``hyp`` in place and returns it."""
    hyp["box"] *= 3.0 / nl
    hyp["cls"] *= nc / 80.0 * 3.0 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3.0 / nl
    hyp["label_smoothing"] = label_smoothing
    return hyp


def warmup_step(optimizer: torch.optim.Optimizer, ni: int, nw: int, hyp: dict, lr_target: float,
                nbs: int, total_batch_size: int) -> int:
    """Warmup at iteration ``ni`` of ``nw``: lr and momentum ramp up, the bias lr ramps down from
    ``warmup_bias_lr``; returns how many batches to accumulate per optimizer step now."""
    xi = [0, nw]
    for j, g in enumerate(optimizer.param_groups):
        g["lr"] = float(np.interp(ni, xi, [hyp["warmup_bias_lr"] if j == 2 else 0.0, g["initial_lr"] * lr_target]))
        mom = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
        if "momentum" in g:
            g["momentum"] = mom
        elif "betas" in g:
            g["betas"] = (mom, g["betas"][1])
    return max(1, int(np.interp(ni, xi, [1, nbs / total_batch_size]).round()))


def multi_scale(imgs: torch.Tensor, imgsz: int, gs: int) -> torch.Tensor:
    """``--multi-scale``: resize the batch to a random multiple of ``gs`` in [0.5, 1.5] x ``imgsz``."""
    sz = random.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + gs) // gs * gs
    sf = sz / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    ns = [math.ceil(x * sf / gs) * gs for x in imgs.shape[2:]]
    return F.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)


def count_layers(model: nn.Module) -> int:
    """Number of numbered layers (``model.0`` .. ``model.N-1``) of a YOLO model."""
    return len(getattr(model, "model", []))


def freeze_layers(model: nn.Module, freeze: Sequence[int]) -> int:
    """``--freeze N`` freezes layers 0..N-1; ``--freeze 2 5 7`` freezes those layers. Returns #params frozen.

    Raises :class:`UserError` for a layer the model does not have.
    """
    n_layers = count_layers(model)
    idx = list(range(freeze[0])) if len(freeze) == 1 else list(freeze)
    bad = [i for i in idx if i < 0 or i >= n_layers]
    if bad or (len(freeze) == 1 and freeze[0] > n_layers):
        raise UserError(f"--freeze {' '.join(map(str, freeze))}: the model has layers 0-{n_layers - 1} only")
    prefixes = [f"model.{i}." for i in idx]
    n = 0
    for k, v in model.named_parameters():
        v.requires_grad = not any(k.startswith(p) for p in prefixes)
        n += not v.requires_grad
    if prefixes:
        LOGGER.info(f"Frozen {n} parameter tensors of layers {idx}")
    return n


def memory_str(device: torch.device) -> str:
    """GPU memory reserved (CUDA) or this process's peak RSS (CPU), for the progress bar."""
    if device.type == "cuda":
        return f"{torch.cuda.memory_reserved(device) / 1e9:.3g}G"
    try:
        import resource
        return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.3g}G"  # KiB on Linux
    except (ImportError, OSError):
        return "-"


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device) -> int:
    """Precise BN: recompute every BatchNorm's running mean/var of ``model`` as plain averages over ``batches``.

    ``batches`` are uint8 image batches (B, 3, H, W). MobileOne blocks sum several BatchNorm'd
    branches per layer, so the small lag of running statistics kept with YOLOv7's momentum
    (0.03) while the weights are still moving compounds through the backbone and the eval-mode
    model (validation, saved weights) can be far off the train-mode one early in training.
    Recomputing the statistics with the final weights (Wu & Johnson, "Rethinking 'Batch' in
    BatchNorm", 2021; fvcore's ``update_bn_stats``) removes that. Returns the number of batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    batches = list(batches)
    if not bns or not batches:
        return 0
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    try:
        with torch.no_grad():  # statistics only: no graph (1x1 MobileOne blocks take their folded path)
            for imgs in batches:
                model(imgs.to(device, non_blocking=True).float() / 255.0)
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        model.train(was_training)
    return len(batches)


@contextlib.contextmanager
def quiet_logs(level: int = logging.WARNING) -> Iterator[None]:
    """Raise the project logger's level inside the block (e.g. not to print a model's layer table twice)."""
    old = LOGGER.level
    LOGGER.setLevel(level)
    try:
        yield
    finally:
        LOGGER.setLevel(old)


def one_cycle(y1: float = 0.0, y2: float = 1.0, steps: int = 100):
    """Cosine ramp from y1 to y2 over ``steps`` (https://arxiv.org/pdf/1812.01187.pdf)."""
    return lambda x: ((1 - math.cos(x * math.pi / steps)) / 2) * (y2 - y1) + y1
