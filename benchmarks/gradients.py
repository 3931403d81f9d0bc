"""Where a freshly built detector's gradient sits: the diagnosis behind MobileOne's identity start.

One batch of a dataset's train split (no augmentation), the plain loss of train.py with its scaled
gains, one backward pass of a freshly built model. Prints, per top-level layer, the L2 norm of the
gradient of its parameters and the standard deviation of its output; for MobileOne models also the
gradient norm per branch kind (conv branches, 1x1 scale branch, BN skip) and the share of the whole.

    python benchmarks/gradients.py                                    # yolov7-tiny-ms0, both starts
    python benchmarks/gradients.py --cfg cfg/training/yolov7-tiny.yaml --start default
    python benchmarks/gradients.py --data data/coco128.yaml --img 320 --start identity plain

``--start identity`` is how every MobileOneBlock is built (a block with a BN skip starts as the
identity: its conv and scale branches' BatchNorm gammas are zero); ``plain`` sets every BatchNorm gamma
of the backbone to 1, as before; ``default`` leaves the model as built (for non-MobileOne models).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.cpu_info import cpu_header  # noqa: E402
from models.common import MobileOneBlock  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.data.config import check_dataset  # noqa: E402
from utils.data.loader import create_dataloader  # noqa: E402
from utils.hyp import load_hyp  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.torch_utils import init_seeds  # noqa: E402
from utils.train_steps import scale_loss_gains  # noqa: E402


def plain_start(model: nn.Module) -> None:
    """Every MobileOneBlock branch's BatchNorm gamma back to 1 (torch's default, the start before the
    identity start)."""
    for m in model.modules():
        if isinstance(m, MobileOneBlock) and not hasattr(m, "reparam_conv"):
            for _, bn in m._branches():
                nn.init.ones_(bn.weight)


def one_batch(data: str, img: int, batch: int, stride: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(images in [0, 1], targets, nc) of the first batch of the dataset's train split."""
    d = check_dataset(data)
    loader, _ = create_dataloader(d["train"], img, batch, stride, workers=0, shuffle=False, nc=d["nc"])
    imgs, targets, _, _ = next(iter(loader))
    return imgs.float() / 255, targets, int(d["nc"])


def branch_kind(name: str) -> str:
    for kind in ("rbr_conv", "rbr_scale", "rbr_skip"):
        if f".{kind}." in name:
            return kind
    return "other"


def measure(cfg: str, start: str, imgs: torch.Tensor, targets: torch.Tensor, nc: int, hyp: dict) -> dict:
    """Per-layer gradient norms and output std, per-branch-kind gradient norms, and the losses."""
    init_seeds(0)
    model = Model(cfg, nc=nc, verbose=False)
    if start == "plain":
        plain_start(model)
    h = dict(hyp)
    scale_loss_gains(h, model.model[-1].nl, nc, imgs.shape[-1])
    model.hyp, model.gr, model.nc = h, 1.0, nc
    model.train()
    stds: dict[int, float] = {}

    def keep_std(i: int):
        def hook(_mod, _inp, out):
            stds[i] = float(out.detach().float().std()) if torch.is_tensor(out) else float("nan")
        return hook

    hooks = [m.register_forward_hook(keep_std(i)) for i, m in enumerate(model.model)]
    pred = model(imgs)
    for hk in hooks:
        hk.remove()
    loss, items = ComputeLoss(model)(pred, targets)
    loss.backward()
    per_layer, per_kind = defaultdict(float), defaultdict(float)
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        sq = float(p.grad.double().pow(2).sum())
        per_layer[int(name.split(".")[1])] += sq
        per_kind[branch_kind(name)] += sq
    return {"layer": {i: v ** 0.5 for i, v in per_layer.items()}, "kind": {k: v ** 0.5 for k, v in per_kind.items()},
            "std": stds, "total": sum(per_layer.values()) ** 0.5, "loss": items.tolist(),
            "types": [m.type for m in model.model]}


def print_table(results: dict[str, dict]) -> None:
    starts = list(results)
    first = results[starts[0]]
    print("| layer | type | " + " | ".join(f"grad ({s}) | out std ({s})" for s in starts) + " |")
    print("|---:|---|" + "---:|---:|" * len(starts))
    for i, t in enumerate(first["types"]):
        cells = " | ".join(f"{r['layer'].get(i, 0.0):.3g} | {r['std'].get(i, float('nan')):.3g}"
                           for r in results.values())
        print(f"| {i} | {t.split('.')[-1]} | {cells} |")
    print("| whole model | | " + " | ".join(f"{r['total']:.3g} | " for r in results.values()) + " |")
    print()
    print("| start | box | obj | cls | " + " | ".join(("rbr_conv", "rbr_scale", "rbr_skip", "other")) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s, r in results.items():
        kinds = " | ".join(f"{r['kind'].get(k, 0.0):.3g}" for k in ("rbr_conv", "rbr_scale", "rbr_skip", "other"))
        box, obj, cls = r["loss"][:3]
        print(f"| {s} | {box:.4f} | {obj:.4f} | {cls:.4f} | {kinds} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default=str(ROOT / "cfg/training/yolov7-tiny-ms0.yaml"))
    p.add_argument("--data", default=str(ROOT / "data/shapes.yaml"))
    p.add_argument("--hyp", default=str(ROOT / "data/hyp.shapes.yaml"))
    p.add_argument("--img", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--start", nargs="+", default=["identity", "plain"], choices=["identity", "plain", "default"])
    args = p.parse_args()
    torch.set_num_threads(2)
    imgs, targets, nc = one_batch(args.data, args.img, args.batch, 32)
    hyp = load_hyp(args.hyp)
    results = {s: measure(args.cfg, s, imgs, targets, nc, hyp) for s in args.start}
    print(f"{Path(args.cfg).name}, {Path(args.data).name}, {args.img} px, batch {args.batch}, "
          f"{len(targets)} targets; {cpu_header()}\n")
    print_table(results)


if __name__ == "__main__":
    main()
