"""Train a YOLOv7 / MobileOne-YOLOv7 detector on a YOLO-format dataset.

Usage:
    python train.py                                   # built-in shapes dataset, tuned defaults (README main job)
    python train.py --cfg cfg/training/yolov7-tiny-ms0.yaml --data my.yaml --img-size 640 --epochs 300
    python train.py --resume                          # continue the most recent run under runs/
    python train.py --resume runs/train/exp/weights/last.pt
    torchrun --nproc_per_node 2 train.py --data my.yaml --batch-size 32   # DDP (NCCL on GPUs, gloo on CPU)
    python train.py --evolve 30 --epochs 10           # hyperparameter evolution (YOLOv7's --evolve)

Defaults (``--epochs``, ``--img-size``, ``--batch-size``) are tuned so that ``python train.py``
alone trains yolov7-tiny-ms0 on the built-in shapes dataset on 2 CPU cores in minutes; for real
datasets pass YOLOv7's usual values (e.g. ``--img-size 640 --epochs 300``).
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import time

if __name__ == "__main__":  # before torch loads (utils/openmp.py: the rule and why)
    from utils.openmp import apply_wait_policy

    apply_wait_policy(training=True)
from collections import deque  # noqa: E402
from copy import deepcopy  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import yaml  # noqa: E402
from torch.optim import lr_scheduler  # noqa: E402

FILE = Path(__file__).resolve()
ROOT = FILE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils.evolve as evo  # noqa: E402
from models.branch_sum import set_fold_pointwise, set_memory_lean  # noqa: E402
from models.experimental import attempt_load  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.allocator import retain_freed_memory  # noqa: E402
from utils.atomic import clean_stale_temps, copy_file, write_text  # noqa: E402
from utils.autoanchor import check_anchors  # noqa: E402
from utils.checkpoint import (  # noqa: E402
    CheckpointError,
    float_state_dict,
    load_checkpoint,
    nonfinite_tensors,
    save_checkpoint,
    strip_optimizer,
    to_plain,
    training_checkpoint,
)
from utils.cli import UserError, fail, require, run_cli  # noqa: E402
from utils.data.config import check_dataset  # noqa: E402
from utils.data.files import list_image_files  # noqa: E402
from utils.data.labels import labels_to_class_weights, labels_to_image_weights  # noqa: E402
from utils.data.loader import create_dataloader  # noqa: E402
from utils.distill import cell_strides, check_compatible, distillation_loss  # noqa: E402
from utils.distributed import (  # noqa: E402
    LOCAL_RANK,
    RANK,
    WORLD_SIZE,
    all_reduce_max,
    cleanup,
    init_distributed,
    torch_distributed_zero_first,
)
from utils.evaluate import evaluate_model  # noqa: E402
from utils.hyp import LOADER_KEYS, load_hyp  # noqa: E402
from utils.log import LOGGER, colorstr, set_logging  # noqa: E402
from utils.loggers import NonFiniteLossError, TrainLog, check_finite_loss  # noqa: E402
from utils.loss import ComputeLoss, ComputeLossOTA  # noqa: E402
from utils.metrics import fitness  # noqa: E402
from utils.plots import plot_images, plot_labels, plot_results, safe_plot  # noqa: E402
from utils.recipe import RunFacts, choose_recipe  # noqa: E402
from utils.runs import find_resume_checkpoint, increment_path, resume_candidates, resume_save_dir  # noqa: E402
from utils.sizes import check_img_size  # noqa: E402
from utils.torch_utils import ModelEMA, de_parallel, init_seeds, intersect_dicts, select_device, to_channels_last  # noqa: E402
from utils.train_steps import (  # noqa: E402
    EMA_ATTRS,
    NBS,
    build_optimizer,
    freeze_layers,
    lr_lambda,
    memory_str,
    multi_scale,
    quiet_logs,
    scale_loss_gains,
    update_bn_stats,
    warmup_iterations,
    warmup_step,
)

SERVICE_FLAGS = ("entity", "upload_dataset", "bbox_interval", "artifact_alias", "bucket")  # W&B / GCS in YOLOv7


# --------------------------------------------------------------------------- run state
@dataclass
class Run:
    """What one training run holds between its steps (built by :func:`start_run`, filled by the others)."""

    opt: argparse.Namespace
    hyp: dict  # scaled below for batch size, layers, classes and image size
    hyp0: dict  # as given (hyp.yaml, checkpoints)
    device: torch.device
    log: TrainLog
    save_dir: Path
    data: dict = field(default_factory=dict)
    nc: int = 0
    names: list = field(default_factory=list)
    model: Any = None
    ema: Optional[ModelEMA] = None
    optimizer: Any = None
    scheduler: Any = None
    lf: Any = None
    scaler: Any = None
    loader: Any = None
    dataset: Any = None
    val_loader: Any = None
    compute_loss: Any = None
    compute_loss_ota: Any = None
    imgsz: int = 0
    imgsz_test: int = 0
    gs: int = 32
    nb: int = 0
    nw: int = 0
    nbs: int = NBS
    accumulate: int = 1
    last_opt_step: int = -1
    start_epoch: int = 0
    best_fitness: Optional[float] = None
    best_epoch: Optional[int] = None  # the epoch best.pt holds (None: from an earlier run, or none yet)
    good: Optional[tuple] = None  # (path, epoch) of the newest finite checkpoint of this run
    results: tuple = (0.0,) * 7
    maps: Any = None  # per-class mAP@.5:.95 of the last validation (for --image-weights)
    bn_batches: Optional[deque] = None
    teacher: Optional[nn.Module] = None  # --teacher: the distillation teacher, eval mode, no gradients

    @property
    def last(self) -> Path:
        return self.save_dir / "weights" / "last.pt"

    @property
    def best(self) -> Path:
        return self.save_dir / "weights" / "best.pt"

    def good_note(self) -> str:
        """Which checkpoint still holds finite weights, for stop messages."""
        if self.good is None:
            return "no checkpoint was saved"
        path, epoch = self.good
        return f"{path} keeps epoch {epoch} (resume with: python train.py --resume {path})"


# --------------------------------------------------------------------------- setup steps
def start_run(hyp: dict, opt: argparse.Namespace, device: torch.device) -> Run:
    """Seeds, dataset, run folder files (hyp.yaml, opt.yaml) and the rank-aware log."""
    save_dir = Path(opt.save_dir)
    run = Run(opt, dict(hyp), dict(hyp), device, TrainLog(RANK, save_dir), save_dir)
    init_seeds(opt.seed + 1 + RANK)
    with torch_distributed_zero_first(LOCAL_RANK):  # rank 0 generates the built-in dataset first
        run.data = check_dataset(opt.data)
    run.nc = 1 if opt.single_cls else int(run.data["nc"])
    run.names = ["item"] if opt.single_cls and len(run.data["names"]) != 1 else list(run.data["names"])
    if run.log.main:
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
        clean_stale_temps(save_dir / "weights")  # temp files of a save that was killed
        run.log.info(colorstr("hyperparameters: ") + ", ".join(f"{k}={v}" for k, v in hyp.items()))
        write_text(save_dir / "hyp.yaml", yaml.safe_dump(to_plain(run.hyp0), sort_keys=False))
        write_text(save_dir / "opt.yaml", yaml.safe_dump(to_plain(vars(opt)), sort_keys=False))
    return run


def read_weights(opt: argparse.Namespace) -> Optional[dict]:
    """The ``--weights`` checkpoint (any file name), or None when training from scratch."""
    if not opt.weights:
        return None
    ckpt = load_checkpoint(opt.weights, map_location="cpu")  # missing/damaged: CheckpointError naming it
    if ckpt.get("fused"):
        raise CheckpointError(f"{opt.weights}: a fused (re-parameterized) checkpoint cannot be trained; "
                              f"use the training checkpoint (last.pt / best.pt) it was made from")
    if not isinstance(ckpt.get("state_dict") or ckpt.get("ema"), dict):
        raise CheckpointError(f"{opt.weights}: no 'state_dict' or 'ema' weights in this checkpoint")
    return ckpt


def transfer_weights(run: Run, model: nn.Module, ckpt: dict) -> None:
    """Load ``ckpt``'s weights into ``model`` where names and shapes match; an error if the backbone gets none."""
    opt = run.opt
    src = ckpt.get("ema") if (ckpt.get("ema") and not opt.resume) else ckpt.get("state_dict")
    src = float_state_dict(src or ckpt.get("ema") or {})
    exclude = ["anchor"] if (opt.cfg or run.hyp.get("anchors")) and not opt.resume else []
    msd = model.state_dict()
    csd = intersect_dicts(src, msd, exclude=exclude)
    backbone = {f"model.{i}." for i in range(len(model.yaml.get("backbone", [])))}
    n_backbone = sum(any(k.startswith(p) for p in backbone) for k in csd)
    if not n_backbone and not opt.allow_partial_weights:
        raise UserError(f"--weights {opt.weights}: no backbone weights match the model ({len(csd)} of {len(msd)} "
                        f"items transfer); pass --allow-partial-weights to train anyway")
    model.load_state_dict(csd, strict=False)
    run.log.info(f"Transferred {len(csd)}/{len(msd)} items from {opt.weights} ({len(src) - len(csd)} checkpoint "
                 f"items skipped: name or shape mismatch{' or anchors' if exclude else ''}; "
                 f"{len(msd) - len(csd)} model items keep their init)")


def setup_model(run: Run, ckpt: Optional[dict]) -> None:
    """Build the model from --cfg (or the checkpoint's cfg), load --weights, freeze layers."""
    opt = run.opt
    cfg = opt.cfg or (ckpt.get("cfg") if ckpt else None)
    if opt.resume and ckpt is not None and ckpt.get("cfg"):
        cfg = ckpt["cfg"]  # the exact (possibly AutoAnchor-modified) model of the interrupted run
    require(bool(cfg), "no model given: pass --cfg model.yaml or --weights checkpoint.pt")
    set_memory_lean(bool(getattr(opt, "memory_lean", False)))
    set_fold_pointwise(not getattr(opt, "plain_pointwise", False))
    model = Model(dict(cfg) if isinstance(cfg, dict) else cfg, ch=3, nc=run.nc, anchors=run.hyp.get("anchors"))
    model = model.to(run.device)
    if ckpt is not None:
        transfer_weights(run, model, ckpt)
    freeze_layers(model, opt.freeze)
    channels_last = getattr(opt, "channels_last", None)
    if (channels_last if channels_last is not None else run.device.type == "cpu") and to_channels_last(model):
        run.log.info("Training in channels-last (NHWC) memory format; --no-channels-last for NCHW")
    run.model = model


def setup_optimizer(run: Run, ckpt: Optional[dict]) -> None:
    """Optimizer (YOLOv7's groups), LR schedule, gradient accumulation; restored state on --resume."""
    opt, hyp = run.opt, run.hyp
    run.nbs = int(hyp.get("nbs", NBS))
    run.accumulate = max(round(run.nbs / opt.total_batch_size), 1)
    hyp["weight_decay"] *= opt.total_batch_size * run.accumulate / run.nbs
    run.log.info(f"Scaled weight_decay = {hyp['weight_decay']:.6g} (accumulate {run.accumulate} batches of "
                 f"{opt.total_batch_size} per step, nominal batch {run.nbs})")
    adam = opt.adam or str(hyp.get("optimizer", "SGD")).lower() == "adam"
    run.optimizer = build_optimizer(run.model, hyp, adam)
    run.lf = lr_lambda(opt.epochs, hyp["lrf"], opt.linear_lr)
    run.scheduler = lr_scheduler.LambdaLR(run.optimizer, lr_lambda=run.lf)
    if opt.resume and ckpt is not None:
        if ckpt.get("optimizer") is not None:
            run.optimizer.load_state_dict(ckpt["optimizer"])
        run.best_fitness = float(ckpt["best_fitness"]) if ckpt.get("best_fitness") is not None else None
        run.start_epoch = int(ckpt["epoch"]) + 1
        run.good = (Path(opt.weights), int(ckpt["epoch"]))
        for g in run.optimizer.param_groups:  # lr of the first resumed epoch = its scheduled value
            g["lr"] = g["initial_lr"] * run.lf(run.start_epoch)
        run.scheduler.last_epoch = run.start_epoch
        run.log.info(f"Resuming {opt.weights}: epoch {run.start_epoch} of {opt.epochs} "
                     f"(epochs 0-{run.start_epoch - 1} done)")


def loader_hyp(hyp: dict) -> dict:
    """The hyperparameters the data loader acts on (the others belong to the optimizer and the loss)."""
    return {k: v for k, v in hyp.items() if k in LOADER_KEYS}


def build_loaders(run: Run) -> None:
    """Training loader (every rank), validation loader (rank 0), label plot and AutoAnchor on a new run."""
    opt, model = run.opt, run.model
    run.gs = max(int(model.stride.max()), 32)
    run.imgsz, run.imgsz_test = [check_img_size(x, run.gs) for x in opt.img_size]
    run.loader, run.dataset = create_dataloader(  # rank 0 builds the label cache first, the others wait
        run.data["train"], run.imgsz, opt.batch_size, run.gs, single_cls=opt.single_cls, hyp=loader_hyp(run.hyp),
        augment=True, cache=opt.cache_images, rect=opt.rect, rank=RANK, workers=opt.workers,
        prefix=colorstr("train: "), shuffle=True, seed=opt.seed, nc=run.nc)
    labels = run.dataset.labels
    labels_all = np.concatenate([lb for lb in labels if len(lb)], 0) if any(len(lb) for lb in labels) \
        else np.zeros((0, 5))
    if len(labels_all) and int(labels_all[:, 0].max()) >= run.nc:
        raise UserError(f"{opt.data}: label class {int(labels_all[:, 0].max())} exceeds nc={run.nc} "
                        f"(possible class labels are 0-{run.nc - 1})")
    if opt.quad:  # YOLOv7's quad collate: groups of 4 images become one of twice the size (loss x4)
        run.loader.collate_fn = type(run.dataset).collate_fn4
    run.nb = len(run.loader)
    require(run.nb > 0, f"{opt.data}: no training batches: {run.data['train']} holds no usable images")
    if not run.log.main:
        return
    run.val_loader = create_dataloader(
        run.data["val"], run.imgsz_test, opt.batch_size * 2, run.gs, single_cls=opt.single_cls,
        hyp=loader_hyp(run.hyp), cache=opt.cache_images if not opt.notest else False, rect=True, rank=-1,
        workers=opt.workers, pad=0.5, prefix=colorstr("val: "), nc=run.nc)[0]
    if not opt.resume:
        if len(labels_all):
            safe_plot(plot_labels, labels_all, run.names, run.save_dir)
        if not opt.noautoanchor and check_anchors(run.dataset, model=model, thr=run.hyp["anchor_t"], imgsz=run.imgsz):
            det = model.model[-1]  # new anchors: also into the yaml saved as the checkpoint's 'cfg'
            model.yaml["anchors"] = [[round(float(v), 2) for v in level.flatten()]
                                     for level in det.anchor_grid.detach().cpu().view(det.nl, -1, 2)]


def setup_ema_and_ddp(run: Run, ckpt: Optional[dict]) -> None:
    """EMA of the weights (rank 0, after AutoAnchor so it has the final anchors), SyncBN and DDP."""
    opt = run.opt
    if run.log.main:
        run.ema = ModelEMA(run.model)
        if opt.resume and ckpt is not None and ckpt.get("ema") is not None:
            run.ema.load_state_dict(ckpt["ema"], updates=int(ckpt.get("updates") or 0))
    if opt.sync_bn:
        if RANK == -1 or run.device.type != "cuda":
            run.log.warning("WARNING: --sync-bn needs DDP on CUDA devices; training without SyncBatchNorm")
        else:  # same Parameter objects: the optimizer stays valid
            run.model = nn.SyncBatchNorm.convert_sync_batchnorm(run.model).to(run.device)
            run.log.info("Using SyncBatchNorm")
    if RANK != -1:  # DDP copies rank 0's parameters and buffers (AutoAnchor's anchors included) to every rank
        from torch.nn.parallel import DistributedDataParallel as DDP
        cuda = run.device.type == "cuda"
        run.model = DDP(run.model, device_ids=[LOCAL_RANK] if cuda else None,
                        output_device=LOCAL_RANK if cuda else None)


def setup_loss(run: Run) -> None:
    """Loss gains scaled for layers / classes / image size (YOLOv7), model attributes, loss objects."""
    opt, hyp, m = run.opt, run.hyp, de_parallel(run.model)
    scale_loss_gains(hyp, m.model[-1].nl, run.nc, run.imgsz, opt.label_smoothing)
    m.nc, m.hyp, m.gr, m.names = run.nc, hyp, 1.0, run.names
    m.class_weights = labels_to_class_weights(run.dataset.labels, run.nc).to(run.device) * run.nc
    run.maps = np.zeros(run.nc)
    run.compute_loss = ComputeLoss(m)
    run.compute_loss_ota = ComputeLossOTA(m) if bool(hyp.get("loss_ota", 1)) else None
    run.teacher = load_teacher(run) if opt.teacher else None
    run.nw = warmup_iterations(hyp["warmup_epochs"], run.nb, opt.epochs)
    run.last_opt_step = run.nb * run.start_epoch - 1
    run.scaler = torch.amp.GradScaler("cuda", enabled=run.device.type == "cuda")
    run.bn_batches = deque(maxlen=opt.precise_bn) if (run.log.main and opt.precise_bn > 0) else None
    run.log.start(run.start_epoch)
    run.log.info(f"Image sizes {run.imgsz} train, {run.imgsz_test} val; {run.nb} batches of {opt.batch_size} per "
                 f"epoch{f' per rank ({WORLD_SIZE} ranks)' if WORLD_SIZE > 1 else ''}; warmup {run.nw} iterations; "
                 f"{'OTA' if run.compute_loss_ota else 'plain'} loss; "
                 f"AMP {'on' if run.device.type == 'cuda' else 'off (CPU)'}\nUsing {opt.workers} dataloader "
                 f"workers\nLogging results to {colorstr('bold', run.save_dir)}\n"
                 f"Starting training for {opt.epochs} epochs...")


def load_teacher(run: Run) -> nn.Module:
    """``--teacher``: the fused, frozen teacher on the run's device, refused unless its head predicts the
    student's cells and classes."""
    path = run.opt.teacher
    teacher = attempt_load(path, map_location=run.device, fuse=True).eval()
    teacher.requires_grad_(False)
    try:
        check_compatible(de_parallel(run.model).model[-1], teacher.model[-1], f"--teacher {path}")
    except ValueError as e:
        raise UserError(str(e)) from None
    run.log.info(f"Distilling from {path} ({teacher.yaml_file}, gain {run.hyp.get('distill', 1.0):g})")
    return teacher


def distill(run: Run, imgs: torch.Tensor, pred: list) -> torch.Tensor:
    """The distillation loss of this batch's student outputs against the teacher's."""
    with torch.no_grad():
        target = run.teacher(imgs)[0]
    head = de_parallel(run.model).model[-1]
    loss, _ = distillation_loss(pred, head.decode(pred), target, cell_strides(pred, head.stride), run.hyp)
    return loss


# --------------------------------------------------------------------------- the loop
def train_step(run: Run, imgs: torch.Tensor, targets: torch.Tensor, epoch: int, i: int) -> torch.Tensor:
    """Forward, loss (every rank stops together on a non-finite loss), backward, optimizer step, EMA."""
    ni, opt = i + run.nb * epoch, run.opt
    if run.nw and ni <= run.nw:
        run.accumulate = warmup_step(run.optimizer, ni, run.nw, run.hyp, run.lf(epoch), run.nbs,
                                     opt.total_batch_size)
    if opt.multi_scale:
        imgs = multi_scale(imgs, run.imgsz, run.gs)
    with torch.amp.autocast("cuda", enabled=run.device.type == "cuda"):
        pred = run.model(imgs)
        targets = targets.to(run.device)
        if run.compute_loss_ota is not None:
            loss, loss_items = run.compute_loss_ota(pred, targets, imgs)
        else:
            loss, loss_items = run.compute_loss(pred, targets)
        if run.teacher is not None:
            loss = loss + distill(run, imgs, pred)
        if RANK != -1:
            loss = loss * WORLD_SIZE  # DDP averages gradients over ranks
        if opt.quad:
            loss = loss * 4.0
    nonfinite = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0], device=run.device)
    if bool(all_reduce_max(nonfinite).item()):
        check_finite_loss(loss.detach(), loss_items.detach(), epoch, i)
        raise NonFiniteLossError(f"non-finite training loss on another rank at epoch {epoch}, batch {i}; stopping")
    run.scaler.scale(loss).backward()
    if ni - run.last_opt_step >= run.accumulate:
        run.scaler.step(run.optimizer)  # no gradient clipping, as YOLOv7 (norms of ~1e3 are normal here)
        run.scaler.update()
        run.optimizer.zero_grad()
        if run.ema is not None:
            run.ema.update(run.model)
        run.last_opt_step = ni
    return loss_items.detach()


def sample_images(run: Run) -> None:
    """``--image-weights``: draw this epoch's images by class weight x (1 - class mAP)^2 (YOLOv7), same on all ranks."""
    n = len(run.dataset)
    indices = None
    if run.log.main:
        cw = de_parallel(run.model).class_weights.cpu().numpy() * (1 - run.maps) ** 2 / run.nc
        iw = labels_to_image_weights(run.dataset.labels, nc=run.nc, class_weights=cw)
        indices = random.choices(range(n), weights=iw, k=n) if iw.sum() > 0 else list(range(n))
    if RANK != -1:
        obj = [indices]
        torch.distributed.broadcast_object_list(obj, src=0)
        indices = obj[0]
    run.dataset.indices = indices
    run.loader._iterator = None  # persistent workers hold their own copy of the dataset: start fresh ones


def train_one_epoch(run: Run, epoch: int) -> torch.Tensor:
    """One pass over the training loader; returns the mean (box, obj, cls, total) loss of the epoch."""
    run.model.train()
    if run.opt.image_weights:
        sample_images(run)
    if RANK != -1 and hasattr(run.loader.sampler, "set_epoch"):
        run.loader.sampler.set_epoch(epoch)
    mloss = torch.zeros(4, device=run.device)
    run.log.info(("\n" + "%10s" * 8) % ("Epoch", "gpu_mem" if run.device.type == "cuda" else "mem", "box", "obj",
                                         "cls", "total", "labels", "img_size"))
    bar = run.log.progress(enumerate(run.loader), total=run.nb)
    run.optimizer.zero_grad()
    for i, (imgs, targets, paths, _) in bar:
        if run.bn_batches is not None:
            run.bn_batches.append(imgs)  # uint8 CPU batch, kept for precise BN (last few of the epoch)
        imgs = imgs.to(run.device, non_blocking=True).float() / 255.0
        items = train_step(run, imgs, targets, epoch, i)
        mloss = (mloss * i + items.to(run.device)) / (i + 1)
        run.log.describe(bar, ("%10s" * 2 + "%10.4g" * 6) % (
            f"{epoch}/{run.opt.epochs - 1}", memory_str(run.device), *mloss, targets.shape[0], imgs.shape[-1]))
        ni = i + run.nb * (epoch - run.start_epoch)
        if run.log.main and ni < 3:
            safe_plot(plot_images, imgs, targets, paths, run.save_dir / f"train_batch{ni}.jpg", names=run.names)
    return mloss


def check_finite_weights(run: Run, epoch: int) -> None:
    """Stop (NonFiniteLossError) when the model or its EMA holds NaN/inf: nothing of it is validated or saved."""
    bad = nonfinite_tensors({"model": de_parallel(run.model).state_dict(), "ema": run.ema.ema.state_dict()})
    if bad:
        raise NonFiniteLossError(f"non-finite weights after epoch {epoch} ({', '.join(bad[:3])}"
                                 f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}); stopping without saving")


def validate(run: Run, final: bool) -> tuple:
    """Evaluate the EMA model on the validation loader (with a progress bar; plots after the final epoch).

    A fused copy is evaluated: the same function as the train-time EMA (``fuse()`` is exact), as the
    saved best.pt is evaluated at the end, and its forwards cost a fraction of the unfused model's
    (docs/benchmarks.md).
    """
    model = deepcopy(run.ema.ema).fuse()
    results, run.maps, _ = evaluate_model(
        model, run.data, batch_size=run.opt.batch_size * 2, imgsz=run.imgsz_test,
        single_cls=run.opt.single_cls, dataloader=run.val_loader, save_dir=run.save_dir,
        verbose=final, plots=final, compute_loss=run.compute_loss, names=run.names,
        v5_metric=run.opt.v5_metric)
    return tuple(results)


def save_checkpoints(run: Run, epoch: int, fi: float) -> None:
    """last.pt first, then best.pt on a real improvement (or when there is none yet), then epoch_NNN.pt."""
    opt = run.opt
    higher = run.best_fitness is None or fi > run.best_fitness
    best_fitness = fi if higher else run.best_fitness
    ckpt = training_checkpoint(de_parallel(run.model), run.ema, run.optimizer, epoch, best_fitness,
                               run.hyp0, vars(opt), run.names)
    save_checkpoint(ckpt, run.last, require_finite=True)  # refused (nothing written) if anything is NaN/inf
    run.good, run.best_fitness = (run.last, epoch), best_fitness
    if higher or not run.best.is_file():  # the same bytes: a file copy costs far less than serializing again
        copy_file(run.last, run.best)
        run.best_epoch = epoch
    if opt.save_period > 0 and (epoch + 1) % opt.save_period == 0:
        copy_file(run.last, run.save_dir / "weights" / f"epoch_{epoch:03d}.pt")


def end_epoch(run: Run, epoch: int, mloss: torch.Tensor) -> None:
    """Scheduler step; on rank 0: finite check, precise BN, validation, results row, checkpoints."""
    lr = [g["lr"] for g in run.optimizer.param_groups]
    run.scheduler.step()
    if not run.log.main:
        return
    opt, final = run.opt, epoch + 1 == run.opt.epochs
    testing, saving = not opt.notest or final, not opt.nosave or final
    check_finite_weights(run, epoch)
    run.ema.update_attr(de_parallel(run.model), include=EMA_ATTRS)
    if run.bn_batches and testing:  # EMA BatchNorm statistics of the model validated (and then saved as best)
        update_bn_stats(run.ema.ema, run.bn_batches, run.device)
    if run.bn_batches is not None:
        run.bn_batches.clear()
    if testing:
        run.results = validate(run, final)
    fi = float(fitness(np.array(run.results, dtype=np.float64).reshape(1, -1))[0])
    run.log.epoch(epoch, list(mloss[:3].cpu().numpy()) + list(run.results) + lr)  # row first: see ResultsCSV
    if saving:
        save_checkpoints(run, epoch, fi)


def finish_checkpoints(run: Run) -> None:
    """best.pt stripped as YOLOv7's ``strip_optimizer`` (EMA weights in fp16, no optimizer: small, for every
    tool); last.pt drops only the optimizer state and keeps the fp32 model and EMA (exact fine-tuning start)."""
    if run.last.is_file():
        ck = load_checkpoint(run.last)
        ck["optimizer"] = None
        save_checkpoint(ck, run.last)
    if run.best.is_file():
        strip_optimizer(run.best)


def finish_run(run: Run, t0: float) -> tuple:
    """Strip the final checkpoints, re-evaluate best.pt with the per-class table (unless it holds the final
    epoch's weights, validated with that table in :func:`end_epoch`), say where everything is."""
    if not run.log.main:
        return run.results
    run.log.info(f"{run.opt.epochs - run.start_epoch} epochs completed in {(time.time() - t0) / 3600:.3f} hours")
    safe_plot(plot_results, save_dir=run.save_dir)
    finish_checkpoints(run)
    final = run.results
    if run.best_epoch == run.opt.epochs - 1:  # best.pt holds the weights the final epoch just validated
        run.log.info(f"{run.best.name} holds the final epoch's weights, validated above (per-class table)")
    elif run.best.is_file() and run.opt.evolve is None:  # a generation of --evolve reports its last validation
        run.log.info(f"\nValidating {run.best}...")
        with quiet_logs():  # the layer table was printed when training started
            model = attempt_load(run.best, map_location=run.device, fuse=True)
        final, _, _ = evaluate_model(
            model, run.data, batch_size=run.opt.batch_size * 2, imgsz=run.imgsz_test,
            single_cls=run.opt.single_cls, dataloader=run.val_loader, save_dir=run.save_dir, verbose=True,
            plots=False, names=run.names, v5_metric=run.opt.v5_metric)
    mp, mr, map50, map_ = final[:4]
    run.log.info(f"Final ({run.best.name if run.best.is_file() else 'last epoch'}): P {mp:.4f}, R {mr:.4f}, "
                 f"mAP@.5 {map50:.4f}, mAP@.5:.95 {map_:.4f}\nResults saved to {colorstr('bold', run.save_dir)}\n"
                 f"Weights: {run.last}" + (f", {run.best}" if run.best.is_file() else ""))
    return tuple(final)


def train(hyp: dict, opt: argparse.Namespace, device: torch.device) -> tuple:
    """Train per ``opt``; returns the final validation results (P, R, mAP@.5, mAP@.5:.95, val losses)."""
    run = start_run(hyp, opt, device)
    ckpt = read_weights(opt)
    setup_model(run, ckpt)
    setup_optimizer(run, ckpt)
    build_loaders(run)
    setup_ema_and_ddp(run, ckpt)
    del ckpt
    setup_loss(run)
    t0 = time.time()
    try:
        for epoch in range(run.start_epoch, opt.epochs):
            mloss = train_one_epoch(run, epoch)
            end_epoch(run, epoch, mloss)
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"{e}; {run.good_note()}") from None
    finally:
        run.log.close()
    return finish_run(run, t0)


# --------------------------------------------------------------------------- CLI
def parse_opt(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a YOLOv7 / MobileOne-YOLOv7 detector",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=str, default="",
                   help="initial weights (a checkpoint of this project, any file name); '' = from scratch")
    p.add_argument("--allow-partial-weights", action="store_true",
                   help="train even when --weights matches none of the model's backbone layers")
    p.add_argument("--cfg", type=str, default="cfg/training/yolov7-tiny-ms0.yaml", help="model.yaml path")
    p.add_argument("--data", type=str, default="data/shapes.yaml", help="data.yaml path (default: built-in shapes)")
    p.add_argument("--hyp", type=str, default="", help="hyperparameters path ('': a recipe chosen from the run, "
                   "utils/recipe.py: YOLOv7's hyp.scratch.tiny.yaml for long runs, a short-run recipe otherwise)")
    p.add_argument("--teacher", type=str, default="", help="a trained checkpoint (same classes and head layout) "
                   "whose outputs the model also learns from (knowledge distillation, hyp 'distill' gain)")
    p.add_argument("--epochs", type=int, default=30, help="number of epochs (default tuned for the built-in shapes)")
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all ranks")
    p.add_argument("--img-size", nargs="+", type=int, default=[128, 128],
                   help="[train, test] image sizes (default tuned for the built-in shapes dataset; YOLOv7: 640)")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="resume the most recent run, or a given last.pt (best.pt when last.pt is gone)")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--notest", action="store_true", help="only validate after the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--evolve", nargs="?", type=int, const=300, default=None,
                   help="evolve hyperparameters for N generations (bare --evolve: 300, as YOLOv7)")
    p.add_argument("--bucket", type=str, default="", help="gsutil bucket (YOLOv7; not supported here)")
    p.add_argument("--cache-images", nargs="?", const="ram", default=False, choices=["ram", "disk"],
                   help="cache images in 'ram' (bare flag) or on 'disk' for faster training")
    p.add_argument("--image-weights", action="store_true", help="use weighted image selection for training")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--adam", action="store_true", help="use torch.optim.Adam() optimizer")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm (DDP on CUDA only)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1,
                   help="DDP rank (set by torch.distributed.launch; torchrun uses the LOCAL_RANK env)")
    p.add_argument("--workers", type=int, default=2, help="maximum number of dataloader workers")
    p.add_argument("--project", default="runs/train", help="save to project/name")
    p.add_argument("--entity", default=None, help="W&B entity (YOLOv7; not supported here)")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--quad", action="store_true", help="quad dataloader (YOLOv7)")
    p.add_argument("--linear-lr", action="store_true", help="linear LR instead of one-cycle cosine")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    p.add_argument("--upload_dataset", action="store_true", help="upload dataset as W&B artifact (not supported here)")
    p.add_argument("--bbox_interval", type=int, default=-1,
                   help="W&B bounding-box image logging interval (not supported here)")
    p.add_argument("--save_period", type=int, default=-1, help="also save a checkpoint every N epochs (-1: off)")
    p.add_argument("--artifact_alias", type=str, default="latest",
                   help="W&B dataset artifact version (not supported here)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0],
                   help="freeze layers: first N (one value) or a list of indices")
    p.add_argument("--v5-metric", action="store_true", help="assume maximum recall as 1.0 in AP calculation")
    p.add_argument("--seed", type=int, default=0, help="random seed (rank r uses seed + 1 + r)")
    p.add_argument("--precise-bn", type=int, default=8,
                   help="recompute the EMA model's BatchNorm statistics on the last N training batches before "
                        "each validation (0: off, keep the running averages)")
    p.add_argument("--memory-lean", action="store_true",
                   help="MobileOne blocks keep one activation instead of k+2 for backward (recomputed): "
                        "less training memory, slower steps")
    p.add_argument("--plain-pointwise", action="store_true",
                   help="train MobileOne 1x1 blocks branch by branch instead of as one folded conv (same "
                        "results up to rounding; slower, more memory)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="train with channels-last (NHWC) weights and activations (default: on for CPU, where "
                        "convolutions train faster so, off for CUDA)")
    p.add_argument("--verbose", action="store_true", help="show a traceback on errors")
    return p.parse_args(argv)


def check_opt(opt: argparse.Namespace) -> None:
    """One-line errors for option values that cannot work (before anything is written)."""
    require(opt.epochs >= 1, f"--epochs {opt.epochs}: must be at least 1")
    require(opt.batch_size >= 1, f"--batch-size {opt.batch_size}: must be at least 1")
    require(all(s >= 1 for s in opt.img_size), f"--img-size {' '.join(map(str, opt.img_size))}: must be positive")
    require(opt.workers >= 0, f"--workers {opt.workers}: must be 0 or more")
    require(opt.precise_bn >= 0, f"--precise-bn {opt.precise_bn}: must be 0 or more")
    require(all(f >= 0 for f in opt.freeze), f"--freeze {' '.join(map(str, opt.freeze))}: layer indices are >= 0")
    require(opt.label_smoothing >= 0 and opt.label_smoothing < 1,
            f"--label-smoothing {opt.label_smoothing}: must be in [0, 1)")
    if opt.evolve is not None:
        require(opt.evolve >= 1, f"--evolve {opt.evolve}: must be at least 1 generation")
        require(not opt.resume, "--evolve and --resume cannot be combined")
    for name in SERVICE_FLAGS:
        val = getattr(opt, name)
        if val not in (None, "", False, -1, "latest"):
            LOGGER.warning(f"--{name}: W&B / Google Cloud Storage are not part of this project; ignored")


def prepare_new(opt: argparse.Namespace) -> dict:
    """Defaults relative to the repository, the default hyp for the dataset, two image sizes."""
    opt.cfg, opt.data = _repo_default(opt.cfg), _repo_default(opt.data)
    if len(opt.img_size) == 1:
        opt.img_size = opt.img_size * 2
    opt.img_size = opt.img_size[:2]
    if opt.hyp:
        hyp = load_hyp(_repo_default(opt.hyp))
    else:
        hyp, why = choose_recipe(run_facts(opt))
        if RANK in (-1, 0):
            print(why)
    opt.save_dir = None  # decided by rank 0 in pick_save_dir
    return hyp


def run_facts(opt: argparse.Namespace) -> RunFacts:
    """What the automatic recipe depends on: the training split's image count, classes, size, epochs, batch."""
    data = check_dataset(opt.data)  # generates the built-in dataset under a file lock
    try:
        images = len(list_image_files(data["train"])[0])
    except FileNotFoundError as e:
        fail(f"{opt.data}: train: {e}")
    return RunFacts(images=images, nc=1 if opt.single_cls else int(data["nc"]), img_size=opt.img_size[0],
                    epochs=opt.epochs, batch_size=opt.batch_size)


def _repo_default(path: str) -> str:
    """A relative path that does not exist from the working directory but does in the repository."""
    if path and not Path(path).exists() and (ROOT / path).exists():
        return str(ROOT / path)
    return path


def resume_checkpoint(opt: argparse.Namespace) -> Path:
    """The checkpoint ``--resume`` means: the given file (else what is left beside it: last.pt, best.pt,
    epoch_NNN.pt), or for a bare ``--resume`` the newest run's under --project (else runs/)."""
    if isinstance(opt.resume, str):
        path = Path(opt.resume)
        if path.is_file():
            return path
        wdir = path / "weights" if (path / "weights").is_dir() else path if path.is_dir() else path.parent
        found = resume_candidates(wdir)
        require(bool(found), f"--resume {opt.resume}: no checkpoint found "
                             f"(no such file, no last.pt or best.pt beside it)")
        print(f"--resume: {path} is not a checkpoint file; resuming from {found[0]}")
        return found[0]
    search = Path(opt.project) if Path(opt.project).is_dir() else Path("runs")
    found = find_resume_checkpoint(search)
    require(found is not None, f"--resume: no checkpoint found (no last.pt or best.pt under {search})")
    return found


def prepare_resume(opt: argparse.Namespace) -> Optional[tuple[argparse.Namespace, dict]]:
    """The interrupted run's options and hyperparameters; None when it already finished."""
    ckpt_path = resume_checkpoint(opt)
    ck = load_checkpoint(ckpt_path)
    saved = ck.get("opt")
    require(isinstance(saved, dict) and "epoch" in ck and isinstance(ck.get("hyp"), dict) and "epochs" in saved,
            f"--resume {ckpt_path}: not a training checkpoint of this project (needs 'opt', 'hyp', 'epoch')")
    if int(ck["epoch"]) + 1 >= int(saved["epochs"]):
        if RANK in (-1, 0):
            print(f"{ckpt_path}: training already finished ({int(saved['epochs'])} of {int(saved['epochs'])} "
                  f"epochs done); nothing to resume.")
        return None
    if ck.get("optimizer") is None:
        raise CheckpointError(f"--resume {ckpt_path}: this checkpoint has no optimizer state (stripped); "
                              f"start a new run with --weights {ckpt_path} instead")
    keep = {k: getattr(opt, k) for k in ("device", "workers", "project", "name", "verbose")}
    new = argparse.Namespace(**{**vars(parse_opt([])), **{k: v for k, v in saved.items() if k in vars(opt)}, **keep})
    new.resume, new.weights, new.cfg = True, str(ckpt_path), ""
    new.batch_size = int(saved.get("total_batch_size", new.batch_size))
    new.save_dir = None
    if RANK in (-1, 0):
        new.save_dir = str(resume_save_dir(ckpt_path, ck, opt.project, opt.name))
        print(f"Resuming training from {ckpt_path}; writing to {new.save_dir}")
    return new, load_hyp(ck["hyp"], source=f"{ckpt_path}: hyp")


def setup_device(opt: argparse.Namespace) -> torch.device:
    """The training device; DDP process group under torchrun / torch.distributed.launch."""
    opt.total_batch_size = opt.batch_size
    device = select_device(opt.device, batch_size=opt.batch_size)
    if LOCAL_RANK != -1:
        if device.type == "cuda":
            device = torch.device("cuda", LOCAL_RANK)
        require(opt.batch_size % WORLD_SIZE == 0,
                f"--batch-size {opt.batch_size}: must be a multiple of the number of ranks {WORLD_SIZE}")
        init_distributed(device)
        opt.batch_size = opt.total_batch_size // WORLD_SIZE
    opt.world_size, opt.global_rank = WORLD_SIZE, RANK
    return device


def pick_save_dir(opt: argparse.Namespace) -> bool:
    """One run folder for all ranks (rank 0 picks, the others receive it); True when it was made now."""
    made = False
    if opt.save_dir is None and RANK in (-1, 0):
        path = Path(opt.project) / opt.name
        made = opt.exist_ok is False or not path.exists()
        opt.save_dir = str(increment_path(path, exist_ok=opt.exist_ok))
    if RANK != -1:
        obj = [opt.save_dir]
        torch.distributed.broadcast_object_list(obj, src=0)
        opt.save_dir = obj[0]
    return made


def remove_if_unused(save_dir: Path) -> None:
    """Remove a run folder this run created when the run failed before saving any checkpoint."""
    if RANK in (-1, 0) and save_dir.is_dir() and not any((save_dir / "weights").glob("*.pt")):
        shutil.rmtree(save_dir, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    opt = parse_opt(argv)
    set_logging(RANK)
    check_opt(opt)
    if opt.evolve is not None:
        return evolve(opt, prepare_new(opt))
    if opt.resume:
        prepared = prepare_resume(opt)
        if prepared is None:
            return 0
        opt, hyp = prepared
    else:
        hyp = prepare_new(opt)
    return run_training(hyp, opt)


def run_training(hyp: dict, opt: argparse.Namespace) -> int:
    """Device, run folder, train; exit code 1 (with a true message) when the run diverged."""
    device = setup_device(opt)
    made = pick_save_dir(opt)
    try:
        train(hyp, opt, device)
    except NonFiniteLossError as e:
        LOGGER.error(f"ERROR: {e}")
        return 1
    except BaseException:
        if made:
            remove_if_unused(Path(opt.save_dir))
        raise
    finally:
        cleanup()
    return 0


def evolve(opt: argparse.Namespace, base: dict) -> int:
    """YOLOv7's ``--evolve N``: N generations of mutate, train (``--notest --nosave``), append to evolve.txt.

    Everything lives in ``--project/--name`` (reused, as YOLOv7 does, so running the command again
    continues the same evolve.txt): evolve.txt (best first), hyp_evolved.yaml (the best so far),
    evolve.png, and the latest generation's run in ``generation/``.
    """
    require(WORLD_SIZE == 1, "--evolve runs in a single process (not under torchrun)")
    opt.notest, opt.nosave = True, True
    folder = Path(opt.project) / opt.name
    folder.mkdir(parents=True, exist_ok=True)
    evolve_txt, out_yaml = folder / "evolve.txt", folder / "hyp_evolved.yaml"
    device, rng = setup_device(opt), np.random.default_rng()
    for g in range(opt.evolve):
        hyp = evo.next_hyp(base, evolve_txt, rng)
        gen_opt = argparse.Namespace(**{**vars(opt), "save_dir": str(folder / "generation")})
        try:
            results = train(dict(hyp), gen_opt, device)
        except NonFiniteLossError as e:  # a diverged generation is the least fit, not the end of the evolution
            LOGGER.warning(f"WARNING: generation {g + 1}: {e}; counted with zero fitness")
            results = (0.0,) * 7
        table = evo.append_evolve(evolve_txt, hyp, results)
        best, best_results = evo.best_hyp(table, base)
        evo.write_evolved_yaml(out_yaml, best, best_results, len(table.rows))
        LOGGER.info(f"{colorstr('evolve:')} generation {g + 1}/{opt.evolve} done; {len(table.rows)} rows in "
                    f"{evolve_txt}, best so far in {out_yaml}")
    safe_plot(evo.plot_evolve, evolve_txt)
    cleanup()
    print(f"Hyperparameter evolution complete. Best results saved as: {out_yaml}\n"
          f"Train with: python train.py --hyp {out_yaml}")
    return 0


if __name__ == "__main__":
    retain_freed_memory()  # the CLI owns the process: reuse freed activation memory (utils/allocator.py)
    raise SystemExit(run_cli(main, prog="train.py"))
