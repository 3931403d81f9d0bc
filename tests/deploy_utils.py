"""Helpers for the deployment tests (export, detect, hubconf): a small untrained checkpoint and media.

The model is an untrained yolov7-tiny-ms0 with 3 classes whose BatchNorm statistics are calibrated
on random images (so activations are well scaled, as in a trained model, and fusing has real
statistics to fold) and whose head weights are scaled down so confidences spread around 0.3 without
saturating (0.25-0.4 on generated images at 128-160 px: distinct scores, hence a well-defined
NMS order).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

NAMES = ["circle", "square", "triangle"]


def make_model(seed: int = 0, calib_size: int = 128, head_scale: float = 0.3):
    from models.yolo import Model
    from utils.train_steps import update_bn_stats

    torch.manual_seed(seed)
    model = Model("yolov7-tiny-ms0.yaml", nc=len(NAMES))
    model.names = list(NAMES)
    with torch.no_grad():  # the project's precise-BN recalibration, on random uint8 images
        update_bn_stats(model, [torch.randint(0, 256, (2, 3, calib_size, calib_size), dtype=torch.uint8)
                                for _ in range(2)], torch.device("cpu"))
        for conv in model.model[-1].m:
            conv.weight.mul_(head_scale)
            conv.bias.zero_()
    return model.eval()


def make_checkpoint(path: Path, seed: int = 0, head_scale: float = 0.3) -> Path:
    """Write a training-format checkpoint (docs/DESIGN.md) of :func:`make_model` to ``path``.

    ``head_scale`` 0.1 gives the best-conditioned decoded outputs (float32 noise ~3e-5 relative,
    for tight agreement checks); 0.3 spreads the confidences more (for NMS checks).
    """
    from utils.checkpoint import save_checkpoint

    model = make_model(seed, head_scale=head_scale)
    ckpt = {"cfg": model.yaml, "state_dict": model.state_dict(), "ema": None, "updates": 0, "optimizer": None,
            "epoch": -1, "best_fitness": None, "hyp": {}, "opt": {}, "names": list(NAMES), "nc": len(NAMES),
            "fused": False}
    return save_checkpoint(ckpt, path)


def make_image(path: Path, h: int = 120, w: int = 150, seed: int = 0) -> Path:
    """A random image with a few filled shapes, written with OpenCV."""
    rng = np.random.default_rng(seed)
    im = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for _ in range(3):
        x, y = int(rng.integers(10, w - 40)), int(rng.integers(10, h - 40))
        cv2.rectangle(im, (x, y), (x + 30, y + 25), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    assert cv2.imwrite(str(path), im)
    return path


def make_video(path: Path, frames: int = 5, h: int = 96, w: int = 128, fps: float = 10.0) -> Path:
    """A short MJPG .avi of random frames."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write MJPG video here"
    rng = np.random.default_rng(1)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    writer.release()
    return path


def count_frames(path: Path) -> int:
    """Frames actually decodable from a video file."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while True:
        ok, _ = cap.read()
        if not ok:
            break
        n += 1
    cap.release()
    return n


ROOT = Path(__file__).resolve().parents[1]


def train_checkpoints(root: Path) -> dict[str, Path]:
    """best.pt and last.pt written by train.py itself: yolov7-tiny-ms0, 1 epoch at 64 px on 4 generated
    images, i.e. one optimizer step. Its BatchNorm statistics have barely moved, so activations reach
    1e4-1e5 and float32 rounding is ~1e3 times that of the main job's model: the hardest checkpoint to export."""
    from utils.data.shapes import NAMES as SHAPES

    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root / "ds"), "train": "images/train", "val": "images/val",
                                    "nc": len(SHAPES), "names": list(SHAPES)}))
    cfg = ROOT / "cfg" / "training" / "yolov7-tiny-ms0.yaml"
    for cmd in (["-m", "utils.data.shapes", "--out", str(root / "ds"), "--n-train", "4", "--n-val", "2", "--seed", "1",
                 "--img-size", "64", "96"],
                [str(ROOT / "train.py"), "--cfg", str(cfg), "--data", str(data), "--epochs", "1", "--img-size", "64",
                 "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", str(root / "runs"),
                 "--name", "exp"]):
        r = subprocess.run([sys.executable, *cmd], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return {name: root / "runs" / "exp" / "weights" / f"{name}.pt" for name in ("best", "last")}


def own_copy(ckpt: Path, folder: Path) -> Path:
    """``ckpt`` copied into ``folder`` (exports are written beside the weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / ckpt.name
    f.write_bytes(ckpt.read_bytes())
    return f
