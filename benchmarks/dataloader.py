"""Dataloader throughput: images/s of the training loader (mosaic) and the eval loader (rect).

    python benchmarks/dataloader.py [--data data/coco128.yaml] [--img-size 640] [--batch-size 16]
                                    [--workers 2] [--epochs 3] [--cache-images ram|disk]

Epoch 1 includes building the label cache (a fresh per-user cache folder is used, so for a
read-only dataset such as coco128 the verification of every image and label is timed; for a
writable dataset delete its labels/*.cache first) and starting the worker processes; later epochs reuse the
cache and the persistent workers. Prints one markdown table; numbers are medians over the
later epochs and depend on the machine's cores (say which when quoting them).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from utils.data.cache import scan_dataset  # noqa: E402
from utils.data.config import check_dataset  # noqa: E402
from utils.data.loader import create_dataloader  # noqa: E402


def run_loader(split, args, nc, train: bool) -> dict:
    """Time building the loader (label scan/cache) and each epoch; returns seconds and counts."""
    hyp = yaml.safe_load((ROOT / "data" / "hyp.scratch.tiny.yaml").read_text()) if train else None
    t0 = time.perf_counter()
    loader, ds = create_dataloader(split, args.img_size, args.batch_size if train else args.batch_size * 2, 32,
                                   hyp=hyp, augment=train, rect=not train, pad=0.0 if train else 0.5,
                                   cache=args.cache_images, workers=args.workers, shuffle=train, seed=0, nc=nc,
                                   prefix="train: " if train else "val: ")
    build = time.perf_counter() - t0
    epochs = []
    for _ in range(args.epochs):
        t = time.perf_counter()
        n = 0
        for imgs, *_ in loader:
            n += imgs.shape[0]
        epochs.append((time.perf_counter() - t, n))
    t = time.perf_counter()
    scan_dataset(split, nc=nc)
    warm = time.perf_counter() - t
    return {"build": build, "warm": warm, "epochs": epochs, "n": len(ds), "workers": loader.num_workers,
            "batch": loader.batch_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "coco128.yaml"))
    ap.add_argument("--img-size", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cache-images", default=False, choices=["ram", "disk"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = check_dataset(args.data)
    rows = []
    for name, split, train in (("train (mosaic, augment)", data["train"], True),
                               ("eval (rect, pad 0.5)", data["val"], False)):
        with tempfile.TemporaryDirectory(prefix="moyolo-bench-") as tmp:
            os.environ["MOYOLO_CACHE_DIR"] = tmp  # a cold label cache (for read-only datasets such as coco128)
            r = run_loader(split, args, data["nc"], train)
        first_t, first_n = r["epochs"][0]
        later = [n / t for t, n in r["epochs"][1:]] or [float("nan")]
        rows.append((name, r["n"], r["batch"], r["workers"], r["build"], r["warm"], first_n / (first_t + r["build"]),
                     first_n / first_t, statistics.median(later)))
    cpu = os.cpu_count()
    print(f"\ndataloader benchmark: {Path(args.data).name}, img-size {args.img_size}, {args.epochs} epochs, "
          f"cache-images {args.cache_images or 'off'}, {cpu} CPU cores, torch {torch.__version__}")
    print("| loader | images | batch | workers | loader build, cold label cache (s) | label scan, warm cache (s) "
          "| epoch 1 incl. build (img/s) | epoch 1 (img/s) | later epochs, median (img/s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, b, w, build, warm, e1s, e1, later in rows:
        print(f"| {name} | {n} | {b} | {w} | {build:.2f} | {warm:.3f} | {e1s:.1f} | {e1:.1f} | {later:.1f} |")


if __name__ == "__main__":
    main()
