"""How far two numerically different copies of one training run drift apart (float64).

    python benchmarks/trajectory.py [--cfg yolov7-tiny-ms0.yaml] [--steps 12] [--compare layout|threads]

Both copies start from the same weights and take the same Adam steps (the main job's hyp, loss and
lr 3e-3) on the same fixed random batches at 128 px; ``layout`` runs one copy channels-last and one
NCHW, ``threads`` runs both NCHW with 1 and 2 intra-op threads (only the summation order differs).
Prints, per step, both losses and the largest relative difference of any parameter: float64 rounding
differences that grow by orders of magnitude per step mean the run's outcome is a draw, not a
property of the code path (docs/benchmarks.md, main job).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.yolo import Model  # noqa: E402
from utils.hyp import load_hyp  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.torch_utils import to_channels_last  # noqa: E402
from utils.train_steps import build_optimizer, scale_loss_gains  # noqa: E402


def random_batches(n: int, img: int, batch: int, nc: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed float64 image batches with 40 random boxes each (YOLO target rows: image, class, xywh)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        imgs = torch.rand(batch, 3, img, img, generator=g, dtype=torch.float64)
        t = torch.zeros(40, 6, dtype=torch.float64)
        t[:, 0] = torch.randint(0, batch, (40,), generator=g)
        t[:, 1] = torch.randint(0, nc, (40,), generator=g)
        t[:, 2:4] = torch.rand(40, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        t[:, 4:] = torch.rand(40, 2, generator=g, dtype=torch.float64) * 0.3 + 0.1
        out.append((imgs, t))
    return out


def train_copy(model: Model, hyp: dict, batches: list, steps: int, threads: int) -> tuple[list[float], list]:
    """Adam steps on ``model`` in place; the loss and a parameter snapshot after every step."""
    torch.set_num_threads(threads)
    opt = build_optimizer(model, hyp, adam=True)
    loss_fn = ComputeLoss(model)
    losses, snaps = [], []
    for i in range(steps):
        imgs, targets = batches[i % len(batches)]
        loss, _ = loss_fn(model(imgs), targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        snaps.append([p.detach().clone() for p in model.parameters()])
    return losses, snaps


def max_rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs().max() / x.abs().max().clamp_min(1e-30)).item() for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg", default="yolov7-tiny-ms0.yaml")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--img", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--compare", choices=["layout", "threads"], default="layout")
    opt = ap.parse_args()
    torch.manual_seed(0)
    hyp = scale_loss_gains(load_hyp(ROOT / "data" / "hyp.shapes.yaml"), 3, 4, opt.img)
    base = Model(str(ROOT / "cfg" / "training" / opt.cfg), nc=4).double().train()
    base.hyp, base.gr, base.nc = hyp, 1.0, 4
    batches = random_batches(6, opt.img, opt.batch_size, 4)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    if opt.compare == "layout":
        assert to_channels_last(b), "this model cannot train channels-last"
        names, threads = ("NCHW", "channels-last"), (2, 2)
    else:
        names, threads = ("NCHW 1 thread", "NCHW 2 threads"), (1, 2)
    la, sa = train_copy(a, hyp, batches, opt.steps, threads[0])
    lb, sb = train_copy(b, hyp, batches, opt.steps, threads[1])
    print(f"{opt.cfg}, float64, {opt.img} px, batch {opt.batch_size}: {names[0]} vs {names[1]}\n")
    print(f"| step | loss {names[0]} | loss {names[1]} | largest relative parameter difference |")
    print("|---:|---:|---:|---:|")
    for i in range(opt.steps):
        print(f"| {i + 1} | {la[i]:.6f} | {lb[i]:.6f} | {max_rel_diff(sa[i], sb[i]):.2e} |")


if __name__ == "__main__":
    main()
