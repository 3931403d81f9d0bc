"""Train a YOLOv7 / MobileOne-YOLOv7 detector on a YOLO-format dataset.

Usage:
    python train.py                                   # built-in shapes dataset, tuned defaults (README main job)
    python train.py --cfg cfg/training/yolov7-tiny-ms0.yaml --data my.yaml --img-size 640 --epochs 300
    python train.py --resume                          # continue the most recent run under runs/
    python train.py --resume runs/train/exp/weights/last.pt
    torchrun --nproc_per_node 2 train.py --data my.yaml --batch-size 32   # DDP (NCCL on GPUs, gloo on CPU)

Defaults (``--epochs``, ``--img-size``, ``--batch-size``) are tuned so that ``python train.py``
alone trains yolov7-tiny-ms0 on the built-in shapes dataset in under 15 minutes on 2 CPU cores;
for real datasets pass YOLOv7's usual values (e.g. ``--img-size 640 --epochs 300``).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

# CPU training: OpenMP threads that busy-wait (libgomp's default) collapse when any other process
# wants a core -- measured here at 40 s instead of 0.9 s per batch-16 step of yolov7-tiny-ms0 at 128 px
# with one other busy process on 2 cores. Sleeping waits cost little on an idle machine. Must be set
# before torch is imported; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections import deque
from copy import deepcopy
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.optim import SGD, Adam, lr_scheduler
from tqdm import tqdm

FILE = Path(__file__).resolve()
ROOT = FILE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils.loss  # noqa: E402  (module attribute lookups: tests may wrap the loss classes)
from models.yolo import Model  # noqa: E402
from test import test as run_test  # noqa: E402  (this repository's test.py, not the stdlib package)
from utils.autoanchor import check_anchors  # noqa: E402
from utils.dataset_config import check_dataset  # noqa: E402
from utils.datasets import create_dataloader  # noqa: E402
from utils.metrics import fitness  # noqa: E402
from utils.plots import plot_images, plot_labels, plot_results, safe_plot  # noqa: E402
from utils.torch_utils import ModelEMA, de_parallel, intersect_dicts, select_device  # noqa: E402
from utils.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from utils.distributed import (LOCAL_RANK, RANK, WORLD_SIZE, all_reduce_max, cleanup,  # noqa: E402
                               init_distributed, torch_distributed_zero_first)
from utils.general import (LOGGER, check_img_size, colorstr, increment_path, init_seeds,  # noqa: E402
                           labels_to_class_weights, one_cycle, set_logging)
from utils.loggers import RESULTS_HEADER, NonFiniteLossError, ResultsCSV, TBLogger, check_finite_loss  # noqa: E402

NBS = 64  # nominal batch size (YOLOv7): gradients are accumulated up to this many images per step;
#           a hyp file may set ``nbs`` to change it (as Ultralytics does)
WARMUP_MIN_ITERS = 100  # warmup lasts at least this many iterations (YOLOv7 uses 1000) ...
WARMUP_MAX_FRACTION = 1 / 3  # ... but never more than this fraction of the whole run


# --------------------------------------------------------------------------- helpers
def load_hyp(hyp: str | Path | dict, _depth: int = 0) -> dict:
    """Hyperparameters from a yaml (safe loader) or a dict.

    A yaml may name ``base: other.yaml`` (relative to its own folder): the base is loaded first
    and this file's keys override it, so a tuned file lists only what it changes.
    """
    if isinstance(hyp, dict):
        return dict(hyp)
    path = Path(hyp)
    if not path.is_file():
        raise FileNotFoundError(f"--hyp {hyp}: file not found")
    with open(path) as f:
        d = yaml.safe_load(f)
    if not isinstance(d, dict):
        raise ValueError(f"--hyp {hyp}: expected a mapping of hyperparameters")
    if d.get("base"):
        if _depth > 4:
            raise ValueError(f"--hyp {hyp}: 'base' chain too deep (a cycle?)")
        d = {**load_hyp(path.parent / str(d.pop("base")), _depth + 1), **d}
    if _depth == 0:
        for k in ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr",
                  "box", "cls", "obj", "anchor_t"):
            if k not in d:
                raise ValueError(f"--hyp {hyp}: missing hyperparameter '{k}'")
        opt_name = str(d.get("optimizer", "SGD"))
        if opt_name.lower() not in ("sgd", "adam"):
            raise ValueError(f"--hyp {hyp}: optimizer must be SGD or Adam, got {opt_name!r}")
    return d


def warmup_iterations(warmup_epochs: float, nb: int, epochs: int) -> int:
    """Warmup length in iterations: ``warmup_epochs`` epochs, at least WARMUP_MIN_ITERS, at most 1/3 of the run (0: none).

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
    for mod_name, m in model.named_modules():
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
    if adam:
        opt = Adam(g_bn, lr=hyp["lr0"], betas=(hyp["momentum"], 0.999))
    else:
        opt = SGD(g_bn, lr=hyp["lr0"], momentum=hyp["momentum"], nesterov=True)
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


def freeze_layers(model: nn.Module, freeze: list[int]) -> int:
    """``--freeze N`` freezes layers 0..N-1; ``--freeze 2 5 7`` freezes those layers. Returns #params frozen."""
    if len(freeze) == 1:
        idx = range(freeze[0])
    else:
        idx = freeze
    prefixes = [f"model.{i}." for i in idx]
    n = 0
    for k, v in model.named_parameters():
        v.requires_grad = True
        if any(k.startswith(p) for p in prefixes):
            v.requires_grad = False
            n += 1
    if prefixes:
        LOGGER.info(f"Frozen {n} parameter tensors of layers {list(idx)}")
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


def find_last_checkpoint(search_dir: str | Path = "runs") -> Path | None:
    """The most recently written ``last*.pt`` under ``search_dir`` (for a bare ``--resume``)."""
    files = [p for p in Path(search_dir).rglob("last*.pt") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


def _to_plain(x: Any) -> Any:
    """Options/hyp values as plain yaml/pickle-free data (Path -> str, tuples -> lists)."""
    if isinstance(x, dict):
        return {str(k): _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


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
        for imgs in batches:
            model(imgs.to(device, non_blocking=True).float() / 255.0)
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        model.train(was_training)
    return len(batches)


def _repo_default(path: str) -> str:
    """A relative path that does not exist from the working directory but does in the repository."""
    if path and not Path(path).exists() and (ROOT / path).exists():
        return str(ROOT / path)
    return path


def _plain_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with python numbers in its param groups (weights_only-loadable)."""
    sd = optimizer.state_dict()
    sd["param_groups"] = [_to_plain(g) for g in sd["param_groups"]]
    return sd


# --------------------------------------------------------------------------- training
def train(hyp: dict, opt: argparse.Namespace, device: torch.device) -> tuple:
    """Train per ``opt``; returns the last validation results (P, R, mAP@.5, mAP@.5:.95, val losses)."""
    save_dir, epochs, batch_size, weights = Path(opt.save_dir), opt.epochs, opt.batch_size, opt.weights
    hyp0 = deepcopy(hyp)  # as given (hyp.yaml, checkpoints); ``hyp`` itself gets scaled below
    total_batch_size = opt.total_batch_size
    main = RANK in (-1, 0)
    cuda = device.type == "cuda"
    plots = True

    wdir = save_dir / "weights"
    last, best = wdir / "last.pt", wdir / "best.pt"
    if main:
        wdir.mkdir(parents=True, exist_ok=True)
        LOGGER.info(colorstr("hyperparameters: ") + ", ".join(f"{k}={v}" for k, v in hyp.items()))
        with open(save_dir / "hyp.yaml", "w") as f:
            yaml.safe_dump(_to_plain(hyp0), f, sort_keys=False)
        with open(save_dir / "opt.yaml", "w") as f:
            yaml.safe_dump(_to_plain(vars(opt)), f, sort_keys=False)

    init_seeds(opt.seed + 1 + RANK)
    with torch_distributed_zero_first(LOCAL_RANK):  # rank 0 generates the built-in dataset first
        data_dict = check_dataset(opt.data)
    train_path, val_path = data_dict["train"], data_dict["val"]
    nc = 1 if opt.single_cls else int(data_dict["nc"])
    names = ["item"] if opt.single_cls and len(data_dict["names"]) != 1 else list(data_dict["names"])

    # ---- model (+ pretrained transfer / resume)
    ckpt = None
    pretrained = bool(weights) and str(weights).endswith(".pt")
    if pretrained:
        ckpt = load_checkpoint(weights, map_location="cpu")
        if ckpt.get("fused"):
            raise CheckpointError(f"{weights}: a fused (re-parameterized) checkpoint cannot be trained; "
                                  f"use the training checkpoint (last.pt / best.pt) it was made from")
    cfg = opt.cfg or (ckpt.get("cfg") if ckpt else None)
    if not cfg:
        raise ValueError("no model given: pass --cfg model.yaml or --weights checkpoint.pt")
    if opt.resume and ckpt is not None and ckpt.get("cfg"):
        cfg = ckpt["cfg"]  # the exact (possibly AutoAnchor-modified) model of the interrupted run
    model = Model(deepcopy(cfg) if isinstance(cfg, dict) else cfg, ch=3, nc=nc,
                  anchors=hyp.get("anchors")).to(device)
    if pretrained:
        src = ckpt.get("ema") if (ckpt.get("ema") and not opt.resume) else ckpt.get("state_dict")
        if src is None:
            src = ckpt.get("ema") or {}
        src = {k: v.float() if v.is_floating_point() else v for k, v in src.items()}
        exclude = ["anchor"] if (opt.cfg or hyp.get("anchors")) and not opt.resume else []
        msd = model.state_dict()
        csd = intersect_dicts(src, msd, exclude=exclude)
        model.load_state_dict(csd, strict=False)
        skipped = len(src) - len(csd)
        LOGGER.info(f"Transferred {len(csd)}/{len(msd)} items from {weights} "
                    f"({skipped} checkpoint items skipped: name or shape mismatch"
                    f"{' or anchors' if exclude else ''}; {len(msd) - len(csd)} model items keep their init)")
    freeze_layers(model, opt.freeze)

    # ---- optimizer, schedule, EMA
    nbs = int(hyp.get("nbs", NBS))
    accumulate = max(round(nbs / total_batch_size), 1)
    hyp["weight_decay"] *= total_batch_size * accumulate / nbs
    LOGGER.info(f"Scaled weight_decay = {hyp['weight_decay']:.6g} (accumulate {accumulate} batches of "
                f"{total_batch_size} per step, nominal batch {nbs})")
    optimizer = build_optimizer(model, hyp, opt.adam or str(hyp.get("optimizer", "SGD")).lower() == "adam")
    lf = lr_lambda(epochs, hyp["lrf"], opt.linear_lr)
    scheduler = lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)

    start_epoch, best_fitness, ema_state = 0, 0.0, None
    if pretrained and opt.resume:
        if ckpt.get("optimizer") is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        best_fitness = float(ckpt.get("best_fitness") or 0.0)
        if ckpt.get("ema") is not None:
            ema_state = (ckpt["ema"], int(ckpt.get("updates") or 0))
        start_epoch = int(ckpt["epoch"]) + 1
        LOGGER.info(f"Resuming {weights}: epoch {start_epoch} of {epochs} (epochs 0-{start_epoch - 1} done), "
                    f"best fitness {best_fitness:.4f}")
    del ckpt

    gs = max(int(model.stride.max()), 32)
    nl = model.model[-1].nl
    imgsz, imgsz_test = [check_img_size(x, gs) for x in opt.img_size]

    # ---- data
    dataloader, dataset = create_dataloader(  # rank 0 builds the label cache first, the others wait
        train_path, imgsz, batch_size, gs, single_cls=opt.single_cls, hyp=hyp, augment=True,
        cache=opt.cache_images, rect=opt.rect, rank=RANK, workers=opt.workers,
        prefix=colorstr("train: "), shuffle=True, seed=opt.seed, nc=nc)
    labels_all = np.concatenate([l for l in dataset.labels if len(l)], 0) if len(dataset.labels) else np.zeros((0, 5))
    if len(labels_all):
        mlc = int(labels_all[:, 0].max())
        if mlc >= nc:
            raise ValueError(f"label class {mlc} exceeds nc={nc} in {opt.data}; possible class labels are 0-{nc - 1}")
    nb = len(dataloader)
    if nb == 0:
        raise ValueError(f"no training batches: {train_path} holds no usable images")

    val_loader = None
    if main:
        val_loader = create_dataloader(
            val_path, imgsz_test, batch_size * 2, gs, single_cls=opt.single_cls, hyp=hyp,
            cache=opt.cache_images and not opt.notest, rect=True, rank=-1, workers=opt.workers,
            pad=0.5, prefix=colorstr("val: "), nc=nc)[0]
        if not opt.resume:
            if plots and len(labels_all):
                safe_plot(plot_labels, labels_all, names, save_dir)
            if not opt.noautoanchor and check_anchors(dataset, model=model, thr=hyp["anchor_t"], imgsz=imgsz):
                det = model.model[-1]  # new anchors: also into the yaml saved as the checkpoint's 'cfg'
                model.yaml["anchors"] = [[round(float(v), 2) for v in level.flatten()]
                                         for level in det.anchor_grid.detach().cpu().view(det.nl, -1, 2)]

    # EMA of the weights (rank 0 only), made after AutoAnchor so it starts with the final anchors
    ema = ModelEMA(model) if main else None
    if ema is not None and ema_state is not None:
        ema.ema.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ema_state[0].items()})
        ema.updates = ema_state[1]
    del ema_state

    if opt.sync_bn and RANK != -1:  # same Parameter objects: the optimizer stays valid
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
        LOGGER.info("Using SyncBatchNorm")
    if RANK != -1:
        # DDP copies rank 0's parameters and buffers (AutoAnchor's anchors included) to every rank
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[LOCAL_RANK] if cuda else None,
                    output_device=LOCAL_RANK if cuda else None)

    # ---- loss scaling for the number of layers / classes / image size (YOLOv7)
    hyp["box"] *= 3.0 / nl
    hyp["cls"] *= nc / 80.0 * 3.0 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3.0 / nl
    hyp["label_smoothing"] = opt.label_smoothing
    m = de_parallel(model)
    m.nc, m.hyp, m.gr, m.names = nc, hyp, 1.0, names
    m.class_weights = labels_to_class_weights(dataset.labels, nc).to(device) * nc

    # ---- training loop
    t0 = time.time()
    nw = warmup_iterations(hyp["warmup_epochs"], nb, epochs)
    last_opt_step = nb * start_epoch - 1
    maps = np.zeros(nc)
    results = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    if start_epoch:  # lr of the first resumed epoch = its scheduled value
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * lf(start_epoch)
        scheduler.last_epoch = start_epoch
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    use_ota = bool(hyp.get("loss_ota", 1))
    compute_loss_ota = utils.loss.ComputeLossOTA(m) if use_ota else None
    compute_loss = utils.loss.ComputeLoss(m)
    csv_log = ResultsCSV(save_dir / "results.csv") if main else None
    tb = TBLogger(save_dir) if main else None
    if main:
        csv_log.start(start_epoch)
        LOGGER.info(f"Image sizes {imgsz} train, {imgsz_test} val; {nb} batches of {batch_size} per epoch"
                    f"{f' per rank ({WORLD_SIZE} ranks)' if WORLD_SIZE > 1 else ''}; warmup {nw} iterations; "
                    f"{'OTA' if use_ota else 'plain'} loss; AMP {'on' if cuda else 'off (CPU)'}\n"
                    f"Using {opt.workers} dataloader workers\nLogging results to {colorstr('bold', save_dir)}\n"
                    f"Starting training for {epochs} epochs...")
    nonfinite = torch.zeros(1, device=device)
    bn_batches = deque(maxlen=opt.precise_bn) if (main and opt.precise_bn > 0) else None

    for epoch in range(start_epoch, epochs):
        model.train()
        if RANK != -1 and hasattr(dataloader.sampler, "set_epoch"):
            dataloader.sampler.set_epoch(epoch)
        mloss = torch.zeros(4, device=device)
        pbar = enumerate(dataloader)
        if main:
            LOGGER.info(("\n" + "%10s" * 8) % ("Epoch", "gpu_mem" if cuda else "mem", "box", "obj", "cls",
                                                 "total", "labels", "img_size"))
            pbar = tqdm(pbar, total=nb, bar_format="{l_bar}{bar:10}{r_bar}{bar:-10b}")
        optimizer.zero_grad()
        for i, (imgs, targets, paths, _) in pbar:
            ni = i + nb * epoch  # iterations since the start of training
            if bn_batches is not None:
                bn_batches.append(imgs)  # uint8 CPU batch, kept for precise BN (last few of the epoch)
            imgs = imgs.to(device, non_blocking=True).float() / 255.0

            if nw and ni <= nw:  # warmup: accumulate, lr and momentum ramp up; bias lr ramps down from warmup_bias_lr
                xi = [0, nw]
                accumulate = max(1, int(np.interp(ni, xi, [1, nbs / total_batch_size]).round()))
                for j, g in enumerate(optimizer.param_groups):
                    g["lr"] = float(np.interp(ni, xi, [hyp["warmup_bias_lr"] if j == 2 else 0.0,
                                                       g["initial_lr"] * lf(epoch)]))
                    mom = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
                    if "momentum" in g:
                        g["momentum"] = mom
                    elif "betas" in g:
                        g["betas"] = (mom, g["betas"][1])

            if opt.multi_scale:
                sz = random.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + gs) // gs * gs
                sf = sz / max(imgs.shape[2:])
                if sf != 1:
                    ns = [math.ceil(x * sf / gs) * gs for x in imgs.shape[2:]]
                    imgs = F.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)

            with torch.amp.autocast("cuda", enabled=cuda):
                pred = model(imgs)
                if use_ota:
                    loss, loss_items = compute_loss_ota(pred, targets.to(device), imgs)
                else:
                    loss, loss_items = compute_loss(pred, targets.to(device))
                if RANK != -1:
                    loss = loss * WORLD_SIZE  # DDP averages gradients over ranks

            nonfinite.fill_(0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0)
            if bool(all_reduce_max(nonfinite).item()):  # every rank stops together
                check_finite_loss(loss.detach(), loss_items.detach(), epoch, i)
                raise NonFiniteLossError(f"non-finite training loss on another rank at epoch {epoch}, batch {i}; "
                                         f"stopping, last.pt keeps the last good epoch")

            scaler.scale(loss).backward()
            if ni - last_opt_step >= accumulate:
                scaler.step(optimizer)  # no gradient clipping, as YOLOv7 (norms of ~1e3 are normal here)
                scaler.update()
                optimizer.zero_grad()
                if ema is not None:
                    ema.update(model)
                last_opt_step = ni

            if main:
                mloss = (mloss * i + loss_items.detach().to(device)) / (i + 1)
                pbar.set_description(("%10s" * 2 + "%10.4g" * 6) % (
                    f"{epoch}/{epochs - 1}", memory_str(device), *mloss, targets.shape[0], imgs.shape[-1]))
                if plots and ni - nb * start_epoch < 3:
                    safe_plot(plot_images, imgs.detach(), targets, paths,
                              save_dir / f"train_batch{ni - nb * start_epoch}.jpg", names=names)
        # ---- end of epoch
        lr = [g["lr"] for g in optimizer.param_groups]
        scheduler.step()

        if main:
            ema.update_attr(model, include=["yaml", "nc", "hyp", "gr", "names", "stride", "class_weights"])
            if bn_batches:  # recompute the EMA model's BatchNorm statistics (validated and saved as such)
                update_bn_stats(ema.ema, bn_batches, device)
                bn_batches.clear()
            final_epoch = epoch + 1 == epochs
            if not opt.notest or final_epoch:
                results, maps, _ = run_test(
                    data_dict, batch_size=batch_size * 2, imgsz=imgsz_test, model=ema.ema,
                    single_cls=opt.single_cls, dataloader=val_loader, save_dir=save_dir,
                    verbose=nc < 50 and final_epoch, plots=plots and final_epoch,
                    compute_loss=compute_loss, names=names)
            fi = float(fitness(np.array(results, dtype=np.float64).reshape(1, -1))[0])
            improved = fi >= best_fitness  # ties count (YOLOv7): best.pt exists after the first epoch
            best_fitness = max(best_fitness, fi)

            row = list(mloss[:3].cpu().numpy()) + list(results) + lr
            csv_log.append(epoch, row)  # first the row, then the checkpoint: see ResultsCSV.start
            tb.log_scalars(dict(zip(RESULTS_HEADER[1:], row)), epoch)

            if not opt.nosave or final_epoch:
                ckpt = {
                    "cfg": _to_plain(deepcopy(de_parallel(model).yaml)),
                    "state_dict": {k: v.detach().cpu().clone() for k, v in de_parallel(model).state_dict().items()},
                    "ema": {k: v.detach().cpu().clone() for k, v in ema.ema.state_dict().items()},
                    "updates": int(ema.updates),
                    "optimizer": _plain_optimizer_state(optimizer),
                    "epoch": epoch,
                    "best_fitness": best_fitness,
                    "hyp": _to_plain(hyp0),
                    "opt": _to_plain(vars(opt)),
                    "names": list(names),
                    "nc": nc,
                    "fused": False,
                    "format": FORMAT,
                }
                if improved:
                    save_checkpoint(ckpt, best)
                save_checkpoint(ckpt, last)
                if opt.save_period > 0 and (epoch + 1) % opt.save_period == 0:
                    save_checkpoint(ckpt, wdir / f"epoch_{epoch:03d}.pt")
                del ckpt
    # ---- end of training
    if main:
        LOGGER.info(f"{epochs - start_epoch} epochs completed in {(time.time() - t0) / 3600:.3f} hours; "
                    f"best fitness {best_fitness:.4f}")
        if plots:
            safe_plot(plot_results, save_dir=save_dir)
        for f in (last, best):  # final files: drop optimizer state (smaller), mark the run finished
            if f.exists():
                ck = load_checkpoint(f)
                ck["optimizer"] = None
                save_checkpoint(ck, f)
        LOGGER.info(f"Results saved to {colorstr('bold', save_dir)}; weights: {best if best.exists() else last}")
        tb.close()
    return results


# --------------------------------------------------------------------------- CLI
def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a YOLOv7 / MobileOne-YOLOv7 detector")
    p.add_argument("--weights", type=str, default="", help="initial weights (.pt checkpoint of this project); '' = from scratch")
    p.add_argument("--cfg", type=str, default="cfg/training/yolov7-tiny-ms0.yaml", help="model.yaml path")
    p.add_argument("--data", type=str, default="data/shapes.yaml", help="data.yaml path (default: built-in shapes)")
    p.add_argument("--hyp", type=str, default="",
                   help="hyperparameters path (default: data/hyp.shapes.yaml for the built-in shapes dataset, "
                        "else data/hyp.scratch.tiny.yaml)")
    p.add_argument("--epochs", type=int, default=30, help="default tuned for the built-in shapes dataset")
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all ranks")
    p.add_argument("--img-size", nargs="+", type=int, default=[128, 128],
                   help="[train, test] image sizes (default tuned for the built-in shapes dataset; YOLOv7: 640)")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume the most recent run, or a given last.pt")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--notest", action="store_true", help="only validate after the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--cache-images", action="store_true", help="cache images in RAM for faster training")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--adam", action="store_true", help="use torch.optim.Adam() optimizer")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm (DDP only)")
    p.add_argument("--workers", type=int, default=2, help="maximum number of dataloader workers")
    p.add_argument("--project", default="runs/train", help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--linear-lr", action="store_true", help="linear LR instead of one-cycle cosine")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    p.add_argument("--save_period", type=int, default=-1, help="also save a checkpoint every N epochs (-1: off)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: first N (one value) or a list of indices")
    p.add_argument("--seed", type=int, default=0, help="random seed (rank r uses seed + 1 + r)")
    p.add_argument("--precise-bn", type=int, default=8,
                   help="recompute the EMA model's BatchNorm statistics on the last N training batches of each "
                        "epoch before validating/saving (0: off, keep the running averages)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opt = parse_opt(argv)
    set_logging(RANK)

    if opt.resume:  # restore the interrupted run's options and hyperparameters; write into the same folder
        ckpt_path = Path(opt.resume) if isinstance(opt.resume, str) else \
            find_last_checkpoint(opt.project if Path(opt.project).is_dir() else "runs")
        if ckpt_path is None or not ckpt_path.is_file():
            print(f"--resume: no checkpoint found "
                  f"({'no last*.pt under ' + opt.project if ckpt_path is None else ckpt_path})", file=sys.stderr)
            return 2
        ck = load_checkpoint(ckpt_path)
        if not isinstance(ck.get("opt"), dict) or "epoch" not in ck or not isinstance(ck.get("hyp"), dict):
            print(f"--resume {ckpt_path}: not a training checkpoint of this project (needs 'opt', 'hyp', 'epoch')",
                  file=sys.stderr)
            return 2
        saved = ck["opt"]
        if int(ck["epoch"]) + 1 >= int(saved["epochs"]):
            if RANK in (-1, 0):
                print(f"{ckpt_path}: training already finished ({int(saved['epochs'])} of {int(saved['epochs'])} "
                      f"epochs done); nothing to resume.")
            return 0
        device_arg, workers = opt.device, opt.workers  # the machine may differ from the interrupted run's
        opt = argparse.Namespace(**{**vars(parse_opt([])), **saved})
        opt.device, opt.workers = device_arg, workers
        opt.resume, opt.weights, opt.cfg = True, str(ckpt_path), ""
        opt.save_dir = str(ckpt_path.resolve().parent.parent)
        opt.batch_size = int(saved.get("total_batch_size", opt.batch_size))
        hyp = dict(ck["hyp"])
        del ck
        if RANK in (-1, 0):
            print(f"Resuming training from {ckpt_path}")
    else:
        opt.cfg, opt.data = _repo_default(opt.cfg), _repo_default(opt.data)
        if not opt.hyp:
            builtin = Path(opt.data).resolve() == (ROOT / "data" / "shapes.yaml").resolve()
            opt.hyp = str(ROOT / "data" / ("hyp.shapes.yaml" if builtin else "hyp.scratch.tiny.yaml"))
            if RANK in (-1, 0):
                print(f"Using hyperparameters {opt.hyp}" + (" (tuned for the built-in shapes dataset)" if builtin else ""))
        hyp = load_hyp(_repo_default(opt.hyp))
        if len(opt.img_size) == 1:
            opt.img_size = opt.img_size * 2
        opt.img_size = opt.img_size[:2]
        opt.save_dir = None  # decided by rank 0 below

    opt.total_batch_size = opt.batch_size
    device = select_device(opt.device, batch_size=opt.batch_size)
    if LOCAL_RANK != -1:
        if device.type == "cuda":
            device = torch.device("cuda", LOCAL_RANK)
        if opt.batch_size % WORLD_SIZE:
            print(f"--batch-size {opt.batch_size} must be a multiple of the number of ranks {WORLD_SIZE}", file=sys.stderr)
            return 2
        init_distributed(device)
        opt.batch_size = opt.total_batch_size // WORLD_SIZE
    opt.world_size, opt.global_rank = WORLD_SIZE, RANK
    if opt.save_dir is None:  # one run folder for all ranks: rank 0 picks it, the others receive it
        obj = [str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)) if RANK in (-1, 0) else None]
        if RANK != -1:
            torch.distributed.broadcast_object_list(obj, src=0)
        opt.save_dir = obj[0]

    try:
        train(hyp, opt, device)
    except NonFiniteLossError as e:
        LOGGER.error(f"ERROR: {e}")
        cleanup()
        return 1
    cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
