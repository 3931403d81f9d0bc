"""The model-zoo table: size, compute and CPU latency of every shipped detector, and optionally the
accuracy of each after the shapes main-job recipe.

    python benchmarks/zoo.py                          # 320 and 640, 20 interleaved runs per cell
    python benchmarks/zoo.py --runs 50 --threads 4
    python benchmarks/zoo.py --train --train-epochs 30 # + accuracy on shapes (a train.py run per model)
    python benchmarks/zoo.py --train --train-seeds 0 1 2   # mean mAP@.5 over three seeds (and each)
    python benchmarks/zoo.py --train --no-latency      # sizes and mAP@.5 only (no timing: may share the CPU)
    python benchmarks/zoo.py --cfg yolov7-tiny-ms2.yaml --runs 1 --img 64 --no-ort   # a smoke run

Columns: parameters of the training (unfused) and fused model; GFLOPs at 640x640 unfused and fused
(``torch.utils.flop_counter`` through ``utils.torch_utils.model_info``: 2 FLOPs per multiply-add);
CPU latency at each ``--img`` size, batch 1, float32, of the fused model in PyTorch eager
(``torch.inference_mode``) and in ONNX Runtime (the fused model exported as export.py does, run
through ``models.backend``), with ``--threads`` intra-op threads. The timed runs are interleaved
round-robin over every (model, runtime, size) cell, so a change in background load during the run
hits all cells alike; each cell reports the median of ``--runs`` runs after ``--warmup``.

``--train`` runs ``python train.py --cfg <yaml> --epochs <--train-epochs>`` for each model with the
main job's other defaults (built-in shapes dataset, data/hyp.shapes.yaml, 128 px, batch 16) and
reports, from the run's results.csv, mAP@.5 after 10 epochs, the best mAP@.5 and mAP@.5:.95 and the
run's whole wall time, so the accuracy/speed trade-off shows in one table.

Run it on an otherwise idle machine: the table's header names the CPU and its instruction sets.
"""
from __future__ import annotations

import argparse
import copy
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.cpu_info import cpu_header  # noqa: E402
from benchmarks.latency import _export_onnx  # noqa: E402
from models.backend import PyTorchBackend, load_backend, set_threads  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.log import LOGGER  # noqa: E402
from utils.torch_utils import model_info  # noqa: E402

ZOO = ["yolov7-tiny.yaml", "yolov7-tiny-ms0.yaml", "yolov7-tiny-ms0-full.yaml", "yolov7-tiny-ms1.yaml",
       "yolov7-tiny-ms2.yaml", "yolov7-tiny-ms3.yaml", "yolov7-tiny-ms4.yaml"]
RUNTIMES = ("PyTorch", "ONNX Runtime")


def size_row(cfg: str) -> tuple[dict, Model]:
    """Parameters and GFLOPs at 640 of the unfused and fused model; returns (row, fused model)."""
    torch.manual_seed(0)
    model = Model(cfg).eval()
    unfused = model_info(model, img_size=640)
    fused_model = copy.deepcopy(model).fuse().eval()
    fused = model_info(fused_model, img_size=640)
    row = {"model": Path(cfg).stem, "params": unfused["parameters"], "params_fused": fused["parameters"],
           "gflops": unfused["gflops"], "gflops_fused": fused["gflops"]}
    return row, fused_model


def runners(fused: Model, name: str, img: int, tmp: Path, args: argparse.Namespace) -> dict[str, Callable]:
    """The callables timed for one model and size: PyTorch fused and (unless --no-ort) ONNX Runtime."""
    x = torch.rand(1, 3, img, img)
    pt = PyTorchBackend.from_model(fused, "cpu", fuse=False)
    out = {"PyTorch": lambda m=pt, x=x: m(x)}
    if not args.no_ort:
        ort = load_backend(_export_onnx(fused, x, tmp / f"{name}-{img}.onnx", args.opset), threads=args.threads)
        out["ONNX Runtime"] = lambda m=ort, x=x: m(x)
    return out


def interleaved_ms(cells: dict[tuple, Callable], warmup: int, runs: int) -> dict[tuple, float]:
    """Median ms per cell; every round times each cell once, so load changes hit all cells alike."""
    for fn in cells.values():
        for _ in range(warmup):
            fn()
    times: dict[tuple, list[float]] = {k: [] for k in cells}
    for _ in range(runs):
        for k, fn in cells.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def train_run(cfg: str, epochs: int, project: Path, seed: int = 0) -> Optional[dict]:
    """One ``train.py --cfg cfg --epochs epochs --seed seed`` run (main-job defaults otherwise), read from its
    ``results.csv``: mAP@.5 after 10 epochs (when the run has them), best mAP@.5 and mAP@.5:.95, whole-process
    wall seconds. Each result is also printed to stderr as it comes (a long sweep can be read while it runs)."""
    name = f"{Path(cfg).stem}-seed{seed}"
    cmd = [sys.executable, str(ROOT / "train.py"), "--cfg", cfg, "--epochs", str(epochs), "--seed", str(seed),
           "--project", str(project), "--name", name, "--exist-ok"]
    print(f"  training: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    csv_file = project / name / "results.csv"
    if r.returncode != 0 or not csv_file.is_file():
        print(f"  training {cfg} failed (exit {r.returncode}): {(r.stdout + r.stderr)[-500:]}", file=sys.stderr)
        return None
    with open(csv_file, newline="") as f:
        rows = list(csv.DictReader(f))
    m50 = [float(row["metrics/mAP_0.5"]) for row in rows]
    m5095 = [float(row["metrics/mAP_0.5:0.95"]) for row in rows]
    run = {"map50_10": m50[9] if len(m50) >= 10 else None, "map50": max(m50), "map": max(m5095), "wall": wall}
    print(f"  {Path(cfg).stem} seed {seed}: " + ", ".join(
        f"{k} {v:.3f}" for k, v in run.items() if v is not None), file=sys.stderr, flush=True)
    return run


TRAIN_COLUMNS = (("map50_10", "mAP@.5 after 10 ep", "{:.3f}"), ("map50", "best mAP@.5", "{:.3f}"),
                 ("map", "best mAP@.5:.95", "{:.3f}"), ("wall", "wall s", "{:.0f}"))


def run_cell(runs: list[Optional[dict]], key: str, fmt: str) -> str:
    """One seed: its value; several: their mean, then each (a failed run is named and left out of the mean)."""
    values = [None if r is None else r[key] for r in runs]
    ok = [v for v in values if v is not None]
    if len(values) == 1:
        return "failed" if not ok else fmt.format(ok[0])
    each = " / ".join("failed" if v is None else fmt.format(v) for v in values)
    return f"{fmt.format(statistics.mean(ok))} ({each})" if ok else f"failed ({each})"


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """The zoo as a markdown table (latency columns per size and runtime, mAP@.5 with --train)."""
    lat = [] if args.no_latency else [(img, rt) for img in args.img for rt in RUNTIMES
                                      if rt == "PyTorch" or not args.no_ort]
    head = ["model", "params", "params fused", "GFLOPs@640", "GFLOPs@640 fused"]
    head += [f"{rt} ms @{img}" for img, rt in lat]
    if args.train:
        head += [f"{title} (shapes, {args.train_epochs} ep)" for key, title, _ in TRAIN_COLUMNS
                 if args.train_epochs >= 10 or key != "map50_10"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        cells = [r["model"], f"{r['params']:,}", f"{r['params_fused']:,}", f"{r['gflops']:.1f}",
                 f"{r['gflops_fused']:.1f}"]
        cells += [f"{r['ms'][(img, rt)]:.1f}" for img, rt in lat]
        if args.train:
            cells += [run_cell(r["train"], key, fmt) for key, _, fmt in TRAIN_COLUMNS
                      if args.train_epochs >= 10 or key != "map50_10"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_opt(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=ZOO, help="model yamls (rows)")
    p.add_argument("--img", nargs="+", type=int, default=[320, 640], help="square image sizes of the latency columns")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the usable cores)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per cell (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per cell before timing")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset of the exported models")
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime columns")
    p.add_argument("--no-latency", action="store_true", help="skip the latency columns (nothing is timed)")
    p.add_argument("--train", action="store_true", help="also train each model with the shapes main-job recipe")
    p.add_argument("--train-epochs", type=int, default=10, help="epochs of each --train run")
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0],
                   help="train.py --seed of the --train runs (several: the table shows their mean and each)")
    opt = p.parse_args(argv)
    if opt.runs < 1 or opt.warmup < 0 or opt.train_epochs < 1 or min(opt.img) < 32:
        p.error("--runs and --train-epochs must be >= 1, --warmup >= 0, every --img >= 32")
    return opt


def main(opt: argparse.Namespace) -> list[dict]:
    opt.threads = set_threads(opt.threads)
    rows, cells = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in opt.cfg:
            row, fused = size_row(cfg)
            rows.append(row)
            for img in [] if opt.no_latency else opt.img:
                for rt, fn in runners(fused, row["model"], img, Path(tmp), opt).items():
                    cells[(row["model"], img, rt)] = fn
        ms = interleaved_ms(cells, opt.warmup, opt.runs)
        for row in rows:
            row["ms"] = {(img, rt): v for (m, img, rt), v in ms.items() if m == row["model"]}
            row["train"] = []
        for seed in opt.train_seeds if opt.train else []:  # every model once per seed, seed by seed
            for row in rows:
                row["train"].append(train_run(f"{row['model']}.yaml", opt.train_epochs, Path(tmp) / "train", seed))
    ort = "" if opt.no_ort else f", onnxruntime {__import__('onnxruntime').__version__}"
    timing = "" if opt.no_latency else (f"batch 1, float32, {opt.threads} threads, median of {opt.runs} interleaved "
                                        f"runs after {opt.warmup} warm-up; ")
    seeds = f"; training seeds {', '.join(map(str, opt.train_seeds))} (several: mean, then each)" if opt.train else ""
    print(f"\n{cpu_header()}\n{timing}torch {torch.__version__}{ort}{seeds}\n")
    print(table(rows, opt))
    return rows


if __name__ == "__main__":
    LOGGER.setLevel("WARNING")  # the layer tables of model building would bury the result
    main(parse_opt())
