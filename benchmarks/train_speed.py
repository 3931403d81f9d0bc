"""Training-loop speed: images/s and peak memory of forward + loss + backward + optimizer step.

    python benchmarks/train_speed.py [--data data/coco128.yaml] [--cfgs yolov7-tiny-ms0 yolov7-tiny]
                                     [--img-sizes 320 640] [--batch-size 16] [--warmup 3] [--steps 5]
                                     [--loss ota|plain] [--threads N] [--modes folded plain lean]
                                     [--layouts nhwc nchw]

Each (model, image size) row runs in a fresh subprocess so its peak resident memory
(``ru_maxrss``) is its own. The row first draws ``warmup + steps`` training batches from
``create_dataloader`` (mosaic + augmentation, hyp.scratch.tiny, in-process: workers=0) and
only then times the loop, so data loading is not counted; what is timed is exactly what
train.py does per batch: ``imgs / 255``, forward, OTA (or plain) loss, backward,
SGD step, zero_grad (no gradient clipping, as train.py). Images/s = batch size / median step time over the
timed steps (the first ``warmup`` steps are not timed). Peak RSS covers the whole row
process (model, optimizer state, batches, autograd) up to the end of the timed loop.
With the OTA loss, each row then times the assignment alone on the last batch's
predictions: the batched ``ComputeLossOTA.build_targets`` against a YOLOv7-style loop over
images (dense ground truth x candidate x class cost, per-ground-truth top-k), and checks
that both give the same positives. Prints one markdown table.

``--modes`` picks how MobileOne blocks train (a row per mode; rows of one model and size run one
after another): ``folded`` is train.py's default (1x1 blocks as one folded conv), ``plain`` is
``--plain-pointwise`` (every block branch by branch), ``lean`` is ``--memory-lean`` (3x3 blocks
recompute their branches in backward; 1x1 blocks folded). ``--layouts`` picks the memory format:
``nhwc`` is train.py's CPU default (``--channels-last``: weights channels-last, the image-reading
layer NCHW), ``nchw`` is ``--no-channels-last``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from benchmarks.cpu_info import cpu_header  # noqa: E402


def peak_rss_gb() -> float:
    """Peak resident set size of this process in GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def time_assignment(loss_fn, pred, targets, imgs, repeats: int = 3) -> tuple[float, float, bool]:
    """Median seconds of the batched and the per-image-loop assignment; whether they agree."""
    import copy

    import torch
    from ota_reference import per_image_ota  # tests/ota_reference.py: the one per-image reference

    loss_fn = copy.copy(loss_fn)
    loss_fn.fixes = True  # the per-image reference assigns as ``hyp ota_fixes: 1`` does
    pred = [x.detach() for x in pred]
    strides, anchors = loss_fn.det.stride, loss_fn.anchors(pred[0].device)
    tb, tl = [], []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            batched = loss_fn.build_targets(pred, targets, imgs)
            t1 = time.perf_counter()
            loop = per_image_ota(pred, targets, loss_fn.find_positives(pred, targets), anchors, strides,
                                 tuple(imgs.shape[-2:]), loss_fn.nc)
            t2 = time.perf_counter()
            tb.append(t1 - t0)
            tl.append(t2 - t1)
    got = {(i, int(b), int(a), int(gj), int(gi), int(t))
           for i, lv in enumerate(batched) for b, a, gj, gi, t in zip(*lv)}
    return statistics.median(tb), statistics.median(tl), got == loop


def run_row(args: argparse.Namespace) -> dict:
    """Benchmark one (cfg, img size) in this process; returns the measurements."""
    import torch
    import yaml

    from models.branch_sum import set_fold_pointwise, set_memory_lean
    from models.yolo import Model
    from utils.data.config import check_dataset
    from utils.data.loader import create_dataloader
    from utils.loss import ComputeLoss, ComputeLossOTA
    from utils.torch_utils import init_seeds
    from utils.train_steps import scale_loss_gains

    if args.threads:
        torch.set_num_threads(args.threads)
    set_fold_pointwise(args.row_mode != "plain")
    set_memory_lean(args.row_mode == "lean")
    from utils.torch_utils import to_channels_last
    init_seeds(0)
    data = check_dataset(args.data)
    nc = int(data["nc"])
    hyp = yaml.safe_load((ROOT / "data" / "hyp.scratch.tiny.yaml").read_text())
    imgsz, bs = args.row_img_size, args.batch_size

    loader, _ = create_dataloader(data["train"], imgsz, bs, 32, hyp=hyp, augment=True, workers=0,
                                  shuffle=True, seed=0, nc=nc, prefix="train: ")
    batches = []
    while len(batches) < args.warmup + args.steps:  # coco128 = 8 batches of 16: cycle if more are asked
        for imgs, targets, _, _ in loader:
            batches.append((imgs, targets))
            if len(batches) == args.warmup + args.steps:
                break
    rss_data = peak_rss_gb()

    cfg = ROOT / "cfg" / "training" / f"{args.row_cfg}.yaml"
    model = Model(str(cfg), nc=nc).train()
    if args.row_layout == "nhwc" and not to_channels_last(model):
        raise SystemExit(f"{args.row_cfg}: channels-last is not available for this model")
    scale_loss_gains(hyp, model.model[-1].nl, nc, imgsz)  # train.py's scaling (YOLOv7)
    model.hyp, model.gr, model.nc = hyp, 1.0, nc
    loss_fn = ComputeLossOTA(model) if args.loss == "ota" else ComputeLoss(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=hyp["lr0"], momentum=hyp["momentum"], nesterov=True)

    steps = []
    for k, (imgs, targets) in enumerate(batches):
        t0 = time.perf_counter()
        x = imgs.float() / 255.0
        pred = model(x)
        t1 = time.perf_counter()
        if args.loss == "ota":
            loss, _ = loss_fn(pred, targets, x)
        else:
            loss, _ = loss_fn(pred, targets)
        t2 = time.perf_counter()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        t3 = time.perf_counter()
        if not torch.isfinite(loss).all():
            raise RuntimeError(f"non-finite loss at step {k}")
        if k >= args.warmup:
            steps.append((t3 - t0, t1 - t0, t2 - t1, t3 - t2, int(targets.shape[0])))
    med = statistics.median(s[0] for s in steps)
    rss_train = peak_rss_gb()
    assign_b, assign_l, same = (time_assignment(loss_fn, pred, targets, x) if args.loss == "ota"
                                else (float("nan"), float("nan"), True))
    return {
        "cfg": args.row_cfg, "mode": args.row_mode, "layout": args.row_layout, "img_size": imgsz, "batch": bs,
        "loss": args.loss,
        "threads": torch.get_num_threads(),
        "img_s": bs / med, "step_s": med,
        "fwd_s": statistics.median(s[1] for s in steps),
        "loss_s": statistics.median(s[2] for s in steps),
        "bwd_s": statistics.median(s[3] for s in steps),
        "labels": statistics.median(s[4] for s in steps),
        "peak_rss_gb": rss_train, "rss_after_data_gb": rss_data,
        "assign_batched_s": assign_b, "assign_loop_s": assign_l, "assign_same": same,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "data" / "coco128.yaml"))
    p.add_argument("--cfgs", nargs="+", default=["yolov7-tiny-ms0", "yolov7-tiny"])
    p.add_argument("--img-sizes", nargs="+", type=int, default=[320, 640])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--loss", choices=["ota", "plain"], default="ota")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--modes", nargs="+", choices=["folded", "plain", "lean"], default=["folded"],
                   help="MobileOne training paths, a row each (folded: train.py's default)")
    p.add_argument("--layouts", nargs="+", choices=["nhwc", "nchw"], default=["nhwc"],
                   help="memory formats, a row each (nhwc: train.py's CPU default)")
    p.add_argument("--row-mode", default="folded", help=argparse.SUPPRESS)
    p.add_argument("--row-layout", default="nhwc", help=argparse.SUPPRESS)
    p.add_argument("--row-cfg", help=argparse.SUPPRESS)
    p.add_argument("--row-img-size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.row_cfg:  # child: one row, JSON on the last stdout line
        print(json.dumps(run_row(args)), flush=True)
        return

    rows = []
    for cfg in args.cfgs:
        for imgsz, mode, layout in [(i, m, lay) for i in args.img_sizes for m in args.modes for lay in args.layouts]:
            cmd = [sys.executable, __file__, "--row-cfg", cfg, "--row-img-size", str(imgsz), "--row-mode", mode,
                   "--row-layout", layout,
                   "--data", args.data, "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
                   "--steps", str(args.steps), "--loss", args.loss, "--threads", str(args.threads)]
            print(f"running {cfg} @ {imgsz} ({mode}, {layout}) ...", file=sys.stderr, flush=True)
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ))
            if r.returncode != 0:
                print(r.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"row {cfg} @ {imgsz} failed (exit {r.returncode})")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"  {json.dumps(rows[-1])}", file=sys.stderr, flush=True)  # kept if a later row dies

    print(f"\n{cpu_header()}\nTraining loop, batch {args.batch_size}, {args.loss.upper()} loss, "
          f"coco128 train (mosaic), "
          f"median of {args.steps} steps after {args.warmup} warm-up, {rows[0]['threads']} torch threads, "
          f"{os.cpu_count()} CPUs\n")
    print("| model | MobileOne path | layout | img size | images/s | step s | forward s | loss s | backward+step s "
          "| labels/batch "
          "| peak RSS GB | OTA assign batched s | OTA assign per-image loop s | loop / batched |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cfg']} | {r['mode']} | {r['layout']} | {r['img_size']} | {r['img_s']:.2f} | {r['step_s']:.2f} | "
              f"{r['fwd_s']:.2f} | "
              f"{r['loss_s']:.3f} | {r['bwd_s']:.2f} | {r['labels']:.0f} | {r['peak_rss_gb']:.2f} | "
              f"{r['assign_batched_s']:.3f} | {r['assign_loop_s']:.3f} | "
              f"{r['assign_loop_s'] / r['assign_batched_s']:.1f}x |")
    if not all(r["assign_same"] for r in rows):
        print("\nWARNING: the batched and per-image assignments differed on some row")


if __name__ == "__main__":
    main()
