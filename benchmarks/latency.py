"""CPU latency of the models, unfused vs fused (re-parameterized), as a markdown table.

    python benchmarks/latency.py                      # 320 and 640, 2 threads, median of 20 runs
    python benchmarks/latency.py --img 640 --runs 50 --threads 4

Each row: batch 1, float32, ``torch.inference_mode``, median wall time of ``--runs`` forwards after
``--warmup`` forwards; parameters and GFLOPs (``torch.utils.flop_counter``, 2 FLOPs per multiply-add,
convolutions / matmuls only) of the model as run.

ONNX Runtime rows (``--ort-cfg``, default yolov7-tiny-ms0; ``--no-ort`` skips them): the fused model
exported as export.py does, verified against PyTorch, run with ``intra_op_num_threads = --threads``.

Run it on a quiet machine with ``OMP_WAIT_POLICY`` unset: under CPU contention PyTorch's
busy-waiting OpenMP threads inflate the PyTorch rows, and ``OMP_WAIT_POLICY=PASSIVE`` (which train.py
sets) adds wake-up latency to every op at batch 1.

Rows come from the producer functions in :data:`ROW_PRODUCERS`; another backend (e.g. ONNX Runtime)
adds rows by appending a function ``producer(args) -> list[Row]`` (use :func:`median_latency_ms` for
the timing so every row is measured the same way).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models.yolo import Model  # noqa: E402
from utils.torch_utils import count_flops  # noqa: E402


@dataclass
class Row:
    """One measured configuration."""
    model: str
    variant: str  # e.g. "PyTorch unfused", "PyTorch fused", "ONNX Runtime fused"
    img: int
    params: int
    gflops: Optional[float]
    median_ms: float
    runs: int


def median_latency_ms(fn: Callable[[], object], warmup: int, runs: int) -> float:
    """Median wall time in ms of ``fn()`` over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def torch_rows(args: argparse.Namespace) -> list[Row]:
    """PyTorch eager rows: each cfg unfused and fused at each image size.

    The timed runs are interleaved round-robin over all rows, so a change in background load
    during the benchmark affects every row alike and the ratios stay meaningful.
    """
    items = []  # (row fields, callable)
    for cfg in args.cfg:
        torch.manual_seed(0)
        unfused = Model(cfg).eval()
        fused = copy.deepcopy(unfused).fuse().eval()
        name = Path(cfg).stem
        for variant, model in (("PyTorch unfused", unfused), ("PyTorch fused", fused)):
            if args.channels_last:
                model = model.to(memory_format=torch.channels_last)
            params = sum(p.numel() for p in model.parameters())
            for img in args.img:
                x = torch.rand(1, 3, img, img)
                if args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                gflops = count_flops(model, x) / 1e9

                def run(m=model, x=x):
                    with torch.inference_mode():
                        return m(x)

                items.append(((name, variant, img, params, gflops), run))
    for _, run in items:
        for _ in range(args.warmup):
            run()
    times = [[] for _ in items]
    for _ in range(args.runs):
        for t, (_, run) in zip(times, items):
            t.append(median_latency_ms(run, 0, 1))
    rows = []
    for (fields, _), t in zip(items, times):
        rows.append(Row(*fields, statistics.median(t), args.runs))
        print(f"  measured {fields[0]} {fields[1]} {fields[2]}: {rows[-1].median_ms:.1f} ms", file=sys.stderr)
    return rows


#: functions producing table rows; append to add a backend.
ROW_PRODUCERS: list[Callable[[argparse.Namespace], list[Row]]] = [torch_rows]


def onnxruntime_rows(args: argparse.Namespace) -> list[Row]:
    """ONNX Runtime rows: the fused model exported as ``export.py`` does (decoded output, static
    shape, opset 17), checked against PyTorch by ``export.export_onnx``, then run by ONNX Runtime on
    the CPU with ``intra_op_num_threads = --threads`` (graph optimizations: all)."""
    if args.no_ort:
        return []
    import tempfile

    import onnxruntime as ort

    from export import DecodedHead, export_onnx

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in args.ort_cfg:
            torch.manual_seed(0)  # the same weights as torch_rows' model
            fused = Model(cfg).eval().fuse().eval()
            name = Path(cfg).stem
            params = sum(p.numel() for p in fused.parameters())
            for img in args.img:
                x = torch.rand(1, 3, img, img)
                gflops = count_flops(fused, x) / 1e9
                f = Path(tmp) / f"{name}-{img}.onnx"
                export_onnx(DecodedHead(fused).eval(), x, f, {"names": list(fused.names), "stride": 32}, ["output"],
                            args.opset, False, False, False, 1e-3, {}, int(fused.stride.max()))
                so = ort.SessionOptions()
                so.intra_op_num_threads = args.threads
                so.inter_op_num_threads = 1
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                sess = ort.InferenceSession(str(f), sess_options=so, providers=["CPUExecutionProvider"])
                feed = {sess.get_inputs()[0].name: x.numpy()}
                ms = median_latency_ms(lambda: sess.run(None, feed), args.warmup, args.runs)
                rows.append(Row(name, "ONNX Runtime fused", img, params, gflops, ms, args.runs))
                print(f"  measured {name} ONNX Runtime fused {img}: {ms:.1f} ms", file=sys.stderr, flush=True)
    return rows


ROW_PRODUCERS.append(onnxruntime_rows)


def markdown_table(rows: list[Row]) -> str:
    """Rows as a markdown table, with the speed-up over the same model's unfused PyTorch row."""
    base = {(r.model, r.img): r.median_ms for r in rows if r.variant == "PyTorch unfused"}
    lines = ["| model | variant | img | params | GFLOPs | median ms | speed-up vs unfused |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = base.get((r.model, r.img))
        speed = f"{b / r.median_ms:.2f}x" if b else "-"
        gf = f"{r.gflops:.1f}" if r.gflops is not None else "-"
        lines.append(f"| {r.model} | {r.variant} | {r.img} | {r.params:,} | {gf} | {r.median_ms:.1f} | {speed} |")
    return "\n".join(lines)


def parse_opt(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", nargs="+", default=["yolov7-tiny-ms0.yaml", "yolov7-tiny.yaml"], help="model yamls")
    p.add_argument("--img", nargs="+", type=int, default=[320, 640], help="square image sizes")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--runs", type=int, default=20, help="timed runs per row (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    p.add_argument("--channels-last", action="store_true", help="run PyTorch models in channels_last")
    p.add_argument("--ort-cfg", nargs="+", default=["yolov7-tiny-ms0.yaml"], help="models for ONNX Runtime rows")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset of the ONNX Runtime rows")
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime rows")
    opt = p.parse_args(argv)
    if opt.runs < 1 or opt.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    return opt


def main(opt: argparse.Namespace) -> list[Row]:
    torch.set_num_threads(opt.threads)
    rows = []
    for producer in ROW_PRODUCERS:
        rows.extend(producer(opt))
    print(f"CPU latency, batch 1, float32, {opt.threads} threads, median of {opt.runs} runs after "
          f"{opt.warmup} warm-up (torch {torch.__version__})\n")
    print(markdown_table(rows))
    by = {(r.model, r.variant, r.img): r.median_ms for r in rows}
    for img in opt.img:
        for cfg in opt.cfg:
            n = Path(cfg).stem
            u, f = by.get((n, "PyTorch unfused", img)), by.get((n, "PyTorch fused", img))
            if u and f:
                print(f"\n{n} @ {img}: fused is {u / f:.2f}x faster than unfused", end="")
        a, b = by.get(("yolov7-tiny-ms0", "PyTorch fused", img)), by.get(("yolov7-tiny", "PyTorch fused", img))
        if a and b:
            print(f"\nfused yolov7-tiny-ms0 / fused yolov7-tiny @ {img}: {a / b:.2f} (latency ratio)", end="")
        for cfg in getattr(opt, "ort_cfg", []):
            n = Path(cfg).stem
            t, o = by.get((n, "PyTorch fused", img)), by.get((n, "ONNX Runtime fused", img))
            if t and o:
                print(f"\n{n} @ {img}: ONNX Runtime fused is {t / o:.2f}x faster than PyTorch eager fused", end="")
    print()
    return rows


if __name__ == "__main__":
    main(parse_opt())
