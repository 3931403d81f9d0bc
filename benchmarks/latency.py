"""CPU latency of the models, unfused vs fused (re-parameterized), as a markdown table.

    python benchmarks/latency.py                      # 320 and 640, all usable cores, median of 20 runs
    python benchmarks/latency.py --img 640 --runs 50 --threads 4
    python benchmarks/latency.py --img 320 --contended --weights best.pt best.onnx

Each row: batch 1, float32, ``torch.inference_mode``, median wall time of ``--runs`` forwards after
``--warmup`` forwards; parameters and GFLOPs (``torch.utils.flop_counter``, 2 FLOPs per multiply-add,
convolutions / matmuls only) of the model as run.

ONNX Runtime rows (``--ort-cfg``, default yolov7-tiny-ms0; ``--no-ort`` skips them): the fused model
exported as export.py does, verified against PyTorch, run through ``models.backend`` (the runtime
detect.py uses: ``--threads`` intra-op threads, sequential, no spinning).

``--weights f1 f2 ...`` adds a row per file of any format ``models.backend.load_backend`` takes
(``.pt``, ``.torchscript.pt``, ``.onnx``, ...), timed on the preprocessed (letterboxed) input at
each ``--img`` size (a static-shape file at its own size).

``--contended`` adds rows for a busy machine: each fused PyTorch / ONNX Runtime configuration is
timed alone, then again while one competing CPU-bound process runs, and the contended / idle
latency ratio is printed (the project's target: at most 3x). With ``--contended`` the script runs
as the CLIs do (``OMP_WAIT_POLICY=PASSIVE`` unless set in the environment).

Run it on a quiet machine with ``OMP_WAIT_POLICY`` unset: under CPU contention PyTorch's
busy-waiting OpenMP threads inflate the PyTorch rows, and ``OMP_WAIT_POLICY=PASSIVE`` (which test.py and
detect.py set) adds wake-up latency to every op at batch 1.

Rows come from the producer functions in :data:`ROW_PRODUCERS`; another backend (e.g. ONNX Runtime)
adds rows by appending a function ``producer(args) -> list[Row]`` (use :func:`median_latency_ms` for
the timing so every row is measured the same way).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if "--contended" in sys.argv:  # time as detect.py/test.py run (set before torch loads OpenMP)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from models.backend import PyTorchBackend, load_backend, set_threads  # noqa: E402
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


def _export_onnx(fused: Model, x: torch.Tensor, f: Path, opset: int) -> Path:
    """The fused model exported by export.py (decoded output, static shape, checked against PyTorch)."""
    from export import run as export_run
    from models.experimental import fused_checkpoint
    from utils.checkpoint import save_checkpoint

    ckpt = save_checkpoint(fused_checkpoint(fused), f.with_suffix(".pt"))
    return Path(export_run(ckpt, img_size=list(x.shape[2:]), include=["onnx"], opset=opset)["files"]["onnx"])


def onnxruntime_rows(args: argparse.Namespace) -> list[Row]:
    """ONNX Runtime rows: the fused model exported as ``export.py`` does (decoded output, static
    shape), loaded by ``models.backend.load_backend`` with ``--threads`` threads."""
    if args.no_ort:
        return []
    import tempfile

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
                m = load_backend(_export_onnx(fused, x, Path(tmp) / f"{name}-{img}.onnx", args.opset),
                                 threads=args.threads)
                ms = median_latency_ms(lambda m=m, x=x: m(x), args.warmup, args.runs)
                rows.append(Row(name, "ONNX Runtime fused", img, params, gflops, ms, args.runs))
                print(f"  measured {name} ONNX Runtime fused {img}: {ms:.1f} ms", file=sys.stderr, flush=True)
    return rows


ROW_PRODUCERS.append(onnxruntime_rows)


def weights_rows(args: argparse.Namespace) -> list[Row]:
    """One row per ``--weights`` file (any format ``load_backend`` takes) at each ``--img`` size:
    the letterboxed, normalised input of a random image through the backend's ``__call__``."""
    import numpy as np

    from utils.data.preprocess import preprocess, to_tensor

    rows = []
    rng = np.random.default_rng(0)
    for w in args.weights:
        m = load_backend(w, threads=args.threads)
        params = sum(p.numel() for p in m.model.parameters()) if isinstance(m, PyTorchBackend) else 0
        for img in ([m.imgsz[0]] if m.imgsz else args.img):
            shape, auto = m.input_size(img)
            im = rng.integers(0, 255, (img, img, 3), dtype=np.uint8)
            x = to_tensor(preprocess(im, shape, m.stride, auto)[0], m.device, m.fp16)
            ms = median_latency_ms(lambda m=m, x=x: m(x), args.warmup, args.runs)
            rows.append(Row(Path(w).name, f"{m.format} file", img, params, None, ms, args.runs))
            print(f"  measured {w} ({m.format}) {img}: {ms:.1f} ms", file=sys.stderr, flush=True)
    return rows


ROW_PRODUCERS.append(weights_rows)


def _competitor() -> subprocess.Popen:
    """One CPU-bound process (a busy Python loop) competing for the cores."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def contended_rows(args: argparse.Namespace) -> list[Row]:
    """With ``--contended``: the fused PyTorch and ONNX Runtime configurations of the first cfg,
    timed alone ("idle") and while one competing CPU-bound process runs ("contended")."""
    if not args.contended:
        return []
    import tempfile

    cfg = args.cfg[0]
    torch.manual_seed(0)
    fused = Model(cfg).eval().fuse().eval()
    name, params = Path(cfg).stem, sum(p.numel() for p in fused.parameters())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for img in args.img:
            x = torch.rand(1, 3, img, img)
            runners = {"PyTorch fused": PyTorchBackend.from_model(fused, "cpu", fuse=False)}
            if not args.no_ort:
                f = _export_onnx(fused, x, Path(tmp) / f"{name}-{img}.onnx", args.opset)
                runners["ONNX Runtime fused"] = load_backend(f, threads=args.threads)
            for variant, m in runners.items():
                for state in ("idle", "contended"):
                    proc = _competitor() if state == "contended" else None
                    try:
                        if proc is not None:
                            time.sleep(0.5)  # let it get scheduled
                        ms = median_latency_ms(lambda m=m, x=x: m(x), args.warmup, args.runs)
                    finally:
                        if proc is not None:
                            proc.kill()
                            proc.wait()
                    rows.append(Row(name, f"{variant}, {state}", img, params, None, ms, args.runs))
                    print(f"  measured {name} {variant} {img} {state}: {ms:.1f} ms", file=sys.stderr, flush=True)
    return rows


ROW_PRODUCERS.append(contended_rows)


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=["yolov7-tiny-ms0.yaml", "yolov7-tiny.yaml"], help="model yamls")
    p.add_argument("--img", nargs="+", type=int, default=[320, 640], help="square image sizes")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for PyTorch and ONNX Runtime (default: the cores this process may use)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per row (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    p.add_argument("--channels-last", action="store_true", help="run PyTorch models in channels_last")
    p.add_argument("--ort-cfg", nargs="+", default=["yolov7-tiny-ms0.yaml"], help="models for ONNX Runtime rows")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset of the ONNX Runtime rows")
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime rows")
    p.add_argument("--weights", nargs="*", default=[], help="model files (any format) to time as well")
    p.add_argument("--contended", action="store_true",
                   help="also time fused PyTorch / ONNX Runtime with one competing CPU-bound process")
    opt = p.parse_args(argv)
    if opt.runs < 1 or opt.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    if opt.threads is not None and opt.threads < 1:
        p.error(f"--threads {opt.threads}: must be at least 1")
    return opt


def main(opt: argparse.Namespace) -> list[Row]:
    opt.threads = set_threads(opt.threads)
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
    for (n, variant, img), idle in by.items():
        busy = by.get((n, variant.replace(", idle", ", contended"), img)) if variant.endswith(", idle") else None
        if busy:
            print(f"\n{n} {variant[:-6]} @ {img}: {busy / idle:.2f}x the idle latency with one competing "
                  f"CPU-bound process (target: at most 3x; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')})",
                  end="")
    print()
    return rows


if __name__ == "__main__":
    main(parse_opt())
