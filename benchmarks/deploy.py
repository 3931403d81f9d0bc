"""Every deployment format of one checkpoint: file size, batch-1 CPU latency, speed-up, mAP@.5.

    python benchmarks/deploy.py --weights best.pt --data data/shapes.yaml
    python benchmarks/deploy.py --weights best.pt --data data/my.yaml --img 320 640 --threads 2 --runs 50
    python benchmarks/deploy.py --weights best.pt --data data/my.yaml --formats pytorch onnx onnx-int8

Exports each format with export.py (dynamic input size, so one file serves every ``--img``; INT8
calibrated on ``--calib-images`` train images of ``--data`` letterboxed to ``--map-img``, the size
the mAP column is measured at, as a user calibrates at the size they run) into ``--out`` (default: a
``<stem>_deploy`` folder beside the weights), then times batch-1 inference at every ``--img`` size in
one interleaved loop (each round runs every format and size once, so a change in machine load hits
all rows alike), ``--threads`` threads for every runtime. The table gives the median latency, the
speed-up against PyTorch eager (fused) at the same size, the file size and mAP@.5 from test.py on
``--data``'s val split at ``--map-img`` (batch 1). The header names the CPU and its SIMD/int8 extensions
(AVX2, AVX-512, VNNI, AMX): INT8 speed depends on them.

Run it on an idle machine: the timings of a loaded machine say nothing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.cpu_info import cpu_header  # noqa: E402
from models.backend import load_backend, set_threads  # noqa: E402
from utils.cli import require, run_cli  # noqa: E402

#: format name -> (export.py --include entry, int8, path of the file beside stem)
FORMATS: dict[str, tuple[Optional[str], bool, str]] = {
    "pytorch": (None, False, "{stem}.pt"),
    "torchscript": ("torchscript", False, "{stem}.torchscript.pt"),
    "onnx": ("onnx", False, "{stem}.onnx"),
    "onnx-int8": ("onnx", True, "{stem}-int8.onnx"),
    "openvino": ("openvino", False, "{stem}_openvino_model"),
    "openvino-int8": ("openvino", True, "{stem}_int8_openvino_model"),
    "ncnn": ("ncnn", False, "{stem}_ncnn_model"),
    "tflite": ("tflite", False, "{stem}_float32.tflite"),
    "tflite-fp16": ("tflite", False, "{stem}_float16.tflite"),
    "executorch": ("executorch", False, "{stem}.pte"),
}
FIXED_SIZE = ("tflite", "tflite-fp16", "executorch")  # phone files: exported once per --img size
DEFAULT_FORMATS = [f for f in FORMATS if f not in FIXED_SIZE]  # the phone formats need requirements-mobile.txt


@dataclass
class Entry:
    """One format: its file, loaded runtime and measurements."""

    name: str
    paths: dict[int, Path]  # file per timed size (the same file for dynamic-size formats)
    backends: dict[int, Any] = field(default_factory=dict)
    times: dict[int, list[float]] = field(default_factory=dict)
    map50: Optional[float] = None


def runtime_header(threads: int) -> str:
    """The CPU line (benchmarks.cpu_info) plus threads and runtime versions."""
    versions = [f"torch {torch.__version__}"]
    for mod in ("onnxruntime", "openvino", "ncnn", "ai_edge_litert", "executorch"):
        try:
            versions.append(f"{mod} {getattr(__import__(mod), '__version__', 'installed')}")
        except ImportError:
            versions.append(f"{mod} missing")
    return f"{cpu_header()}\nthreads: {threads}; {'; '.join(versions)}"


def export_all(weights: Path, out: Path, formats: Sequence[str], data: Optional[str], img: int,
               calib_images: int, sizes: Sequence[int]) -> dict[str, dict[int, Path]]:
    """Run export.py for every needed format: once with a dynamic size, and once per size in ``sizes`` for
    the fixed-size phone formats (into ``out/<size>/``); format -> size -> file."""
    import export

    dynamic = [f for f in formats if f not in FIXED_SIZE]
    phone = [f for f in formats if f in FIXED_SIZE]
    int8 = any(FORMATS[f][1] for f in formats)
    require(not int8 or data, "INT8 formats need --data (calibration images)")
    w = _copy_weights(weights, out)
    include = sorted({FORMATS[f][0] for f in dynamic if FORMATS[f][0]})
    if include:
        export.run(w, img_size=[img], include=include, dynamic=True, int8=int8, data=data,
                   calib_images=calib_images, int8_max_drop=100.0)
    paths = {f: {s: Path(FORMATS[f][2].format(stem=w.with_suffix(""))) for s in sizes} for f in dynamic}
    for s in sizes if phone else ():
        ws = _copy_weights(weights, out / str(s))
        export.run(ws, img_size=[s], include=sorted({FORMATS[f][0] for f in phone}))
        for f in phone:
            paths.setdefault(f, {})[s] = Path(FORMATS[f][2].format(stem=ws.with_suffix("")))
    return paths


def _copy_weights(weights: Path, folder: Path) -> Path:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    w = folder / weights.name
    if w.resolve() != weights.resolve():
        shutil.copy2(weights, w)
    return w


def size_mb(path: Path) -> float:
    """Size of a file, or of all files in a folder, in MB."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


@torch.inference_mode()
def time_interleaved(entries: list[Entry], sizes: Sequence[int], warmup: int, runs: int) -> None:
    """Median-ready latencies: every round runs each format at each size once (batch 1)."""
    inputs = {s: torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(s)) for s in sizes}
    for e in entries:
        e.times = {s: [] for s in sizes}
        for s in sizes:
            for _ in range(warmup):
                e.backends[s](inputs[s])
    for _ in range(runs):
        for s in sizes:
            for e in entries:
                t = time.perf_counter()
                e.backends[s](inputs[s])
                e.times[s].append((time.perf_counter() - t) * 1e3)


def measure_map(entries: list[Entry], data: str, img: int, threads: int) -> None:
    """mAP@.5 of each file with test.py (val split, batch 1; a fixed-size file: the one exported at ``img``,
    else none)."""
    from test import test as evaluate

    for e in entries:
        if img not in e.paths:
            continue
        e.map50 = float(evaluate(data, weights=str(e.paths[img]), batch_size=1, imgsz=img, plots=False, device="cpu",
                                 workers=0, threads=threads, progress=False)[0][2])


def table(entries: list[Entry], sizes: Sequence[int]) -> str:
    """Markdown table: format, size, ms and speed-up per image size, mAP@.5."""
    head = "| format | file MB | " + " | ".join(f"{s} ms | {s} speed-up" for s in sizes) + " | mAP@.5 |"
    lines = [head, "|" + "---|" * (3 + 2 * len(sizes))]
    base = {s: statistics.median(entries[0].times[s]) for s in sizes}
    for e in entries:
        cells = []
        for s in sizes:
            ms = statistics.median(e.times[s])
            cells += [f"{ms:.1f}", f"{base[s] / ms:.2f}x"]
        m = f"{e.map50:.4f}" if e.map50 is not None else "-"
        lines.append(f"| {e.name} | {size_mb(e.paths[max(sizes)]):.1f} | " + " | ".join(cells) + f" | {m} |")
    return "\n".join(lines)


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/deploy.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", default="best.pt", help="training or fused checkpoint")
    p.add_argument("--data", default=str(ROOT / "data" / "shapes.yaml"), help="dataset yaml (INT8, mAP)")
    p.add_argument("--formats", nargs="+", default=DEFAULT_FORMATS, choices=list(FORMATS),
                   help="formats to compare (tflite, tflite-fp16 and executorch need requirements-mobile.txt)")
    p.add_argument("--img", nargs="+", type=int, default=[320, 640], help="square input sizes to time")
    p.add_argument("--map-img", type=int, default=None, help="test.py image size (default: the largest --img)")
    p.add_argument("--threads", type=int, default=2, help="threads of every runtime")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per format and size")
    p.add_argument("--runs", type=int, default=30, help="timed rounds")
    p.add_argument("--calib-images", type=int, default=300, help="INT8 calibration images")
    p.add_argument("--out", default=None, help="export folder (default: <stem>_deploy beside the weights)")
    p.add_argument("--no-map", action="store_true", help="skip the mAP column")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    opt = parse_opt(argv)
    weights = Path(opt.weights)
    require(weights.is_file(), f"--weights {weights}: not found")
    require(opt.threads >= 1 and opt.runs >= 1 and min(opt.img) > 0, "--threads, --runs and --img must be positive")
    formats = ["pytorch"] + [f for f in opt.formats if f != "pytorch"]  # the speed-up reference comes first
    out = Path(opt.out) if opt.out else weights.parent / f"{weights.stem}_deploy"
    # files are dynamic-size (one serves every --img); INT8 is calibrated and checked at the size mAP is measured
    paths = export_all(weights, out, formats, opt.data, opt.map_img or max(opt.img), opt.calib_images, opt.img)
    threads = set_threads(opt.threads)
    entries = [Entry(f, paths[f], {s: load_backend(p, "cpu", threads=threads) for s, p in paths[f].items()})
               for f in formats]
    time_interleaved(entries, opt.img, opt.warmup, opt.runs)
    if not opt.no_map:
        measure_map(entries, opt.data, opt.map_img or max(opt.img), threads)
    print(runtime_header(threads))
    print(f"batch 1, median of {opt.runs} interleaved rounds; speed-up vs PyTorch eager (fused) at the same size\n")
    print(table(entries, opt.img))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="benchmarks/deploy.py"))
