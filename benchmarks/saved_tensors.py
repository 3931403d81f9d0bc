"""What a training step holds for backward: the tensors autograd saves, by the kind of layer that saved them.

    python benchmarks/saved_tensors.py                                   # ms0 and yolov7-tiny, 640 px, batch 16
    python benchmarks/saved_tensors.py --cfgs yolov7-tiny-ms0 --img 320 --batch-size 4 --modes folded lean

One forward of a freshly built model in train mode (random images, channels-last as train.py trains on CPU,
unless ``--nchw``) under ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd packs is counted
once per storage (views and tensors saved by several nodes count once) and attributed to the innermost module
running when it was first saved: a MobileOneBlock's own sums (3x3 or 1x1), its branch convs and BatchNorms, the
YOLOv7 layers. Nothing is stored: each packed tensor is measured and kept by reference only, so the figure is the
memory the step keeps alive until backward, without the allocator's overhead. ``--modes`` runs the MobileOne
training paths of train.py (``folded``: the default, ``lean``: ``--memory-lean``, ``plain``:
``--plain-pointwise``). Prints one markdown table per model and mode, GB at the given size and batch.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from benchmarks.cpu_info import cpu_header  # noqa: E402
from models.branch_sum import set_fold_pointwise, set_memory_lean  # noqa: E402
from models.common import MobileOneBlock  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.log import LOGGER  # noqa: E402
from utils.torch_utils import to_channels_last  # noqa: E402


def kind(module: nn.Module, block: MobileOneBlock | None) -> str:
    """The row a saved tensor is counted in (``block``: the MobileOneBlock ``module`` is part of, if any)."""
    if isinstance(module, MobileOneBlock):
        return f"MobileOneBlock {module.kernel_size}x{module.kernel_size} (its own sums)"
    if block is not None:
        return f"MobileOneBlock {block.kernel_size}x{block.kernel_size}: {type(module).__name__}"
    return type(module).__name__


def owning_blocks(model: nn.Module) -> dict[nn.Module, MobileOneBlock]:
    """Each module inside a MobileOneBlock -> that block."""
    return {m: b for b in model.modules() if isinstance(b, MobileOneBlock) for m in b.modules() if m is not b}


def saved_by_kind(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Bytes of the storages autograd saves in one forward of ``model(x)``, by :func:`kind`."""
    stack: list[str] = []
    blocks = owning_blocks(model)
    def enter(mod: nn.Module, args: tuple) -> None:
        stack.append(kind(mod, blocks.get(mod)))

    def leave(mod: nn.Module, args: tuple, out: object) -> None:  # returns None: the output is left as it is
        stack.pop()

    for m in model.modules():
        m.register_forward_pre_hook(enter)
        m.register_forward_hook(leave)
    seen: set[int] = set()
    totals: dict[str, float] = defaultdict(float)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            totals[stack[-1] if stack else "(outside modules: loss inputs)"] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return dict(totals)


def row_table(totals: dict[str, float]) -> str:
    lines = ["| saved by | GB |", "|---|---:|"]
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v / 1e9:.2f} |")
    lines.append(f"| **total** | **{sum(totals.values()) / 1e9:.2f}** |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfgs", nargs="+", default=["yolov7-tiny-ms0", "yolov7-tiny"])
    p.add_argument("--img", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--modes", nargs="+", choices=["folded", "lean", "plain"], default=["folded"])
    p.add_argument("--nchw", action="store_true", help="NCHW instead of train.py's channels-last CPU default")
    opt = p.parse_args()
    LOGGER.setLevel("WARNING")
    print(f"{cpu_header()}\ntorch {torch.__version__}; one train-mode forward, {opt.img} px, batch {opt.batch_size}, "
          f"{'NCHW' if opt.nchw else 'channels-last'}\n")
    for cfg in opt.cfgs:
        for mode in opt.modes:
            set_fold_pointwise(mode != "plain")
            set_memory_lean(mode == "lean")
            torch.manual_seed(0)
            model = Model(str(ROOT / "cfg" / "training" / f"{cfg}.yaml"), nc=80).train()
            if not opt.nchw:
                to_channels_last(model)
            x = torch.rand(opt.batch_size, 3, opt.img, opt.img)
            print(f"### {cfg}, {mode}\n\n{row_table(saved_by_kind(model, x))}\n", flush=True)


if __name__ == "__main__":
    main()
