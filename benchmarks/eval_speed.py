"""Wall time of test.py over coco128 val, split into loading, inference, NMS and metrics.

Each configuration (model x image size) runs in a fresh ``python`` process, as a user's
``python test.py ...`` would: the wall time includes interpreter start, imports, model
load + fuse and the dataset scan ("setup"). Stage times come from ``test(report=...)``.

    python benchmarks/eval_speed.py                          # untrained yolov7-tiny-ms0, 320 and 640
    python benchmarks/eval_speed.py --weights best.pt        # + a trained checkpoint
    python benchmarks/eval_speed.py --sizes 320 --repeats 3  # median of 3 runs

Prints a markdown table (seconds, medians over --repeats). ``cpu`` is the process's user + sys
CPU time, a figure that background load on the machine inflates far less than wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("setup", "load", "preprocess", "inference", "nms", "metrics", "plots", "json")


def make_untrained(path: Path, cfg: str, seed: int = 0) -> Path:
    """A freshly initialised model saved as a training checkpoint (what --weights would load)."""
    sys.path.insert(0, str(ROOT))
    import torch
    import yaml

    from models.yolo import Model
    from utils.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    names = yaml.safe_load((ROOT / "data" / "coco128.yaml").read_text())["names"]
    m = Model(cfg, nc=len(names))
    return save_checkpoint({"cfg": m.yaml, "state_dict": m.state_dict(), "names": names, "nc": len(names),
                            "fused": False}, path)


def child(args: argparse.Namespace) -> None:
    """Run one evaluation in this process and print its report as the last stdout line."""
    sys.path.insert(0, str(ROOT))
    from models.backend import set_threads

    set_threads(args.threads or None)  # default: the cores this process may use
    import test as evaluator

    report: dict = {}
    with tempfile.TemporaryDirectory() as d:
        (_, _, map50, map_, *_), _, times = evaluator.test(
            args.data, args.weights, batch_size=args.batch_size, imgsz=args.img_size, save_json=args.save_json,
            plots=True, device=args.device, save_dir=Path(d), report=report, workers=args.workers)
    out = {"timings": report["timings"], "images": report["images"], "map50": map50, "map": map_}
    print(json.dumps(out))


def run_one(weights: Path, size: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", "--weights", str(weights), "--img-size",
           str(size), "--data", args.data, "--batch-size", str(args.batch_size), "--device", args.device,
           "--workers", str(args.workers), "--threads", str(args.threads)] + (["--save-json"] if args.save_json else [])
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if p.returncode:
        raise RuntimeError(f"evaluation failed ({' '.join(cmd)}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    t = r["timings"]
    t["setup"] = wall - sum(t[k] for k in STAGES if k != "setup" and k in t)
    t["wall"] = wall
    t["cpu"] = cpu
    warned = (p.stderr + p.stdout).count("NMS took")
    return {"t": t, "map50": r["map50"], "map": r["map"], "images": r["images"], "nms_warning": warned}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="", help="a trained checkpoint or any file test.py accepts (optional)")
    ap.add_argument("--cfg", default=str(ROOT / "cfg" / "training" / "yolov7-tiny-ms0.yaml"))
    ap.add_argument("--data", default=str(ROOT / "data" / "coco128.yaml"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--img-size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: the cores this process may use)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--save-json", action="store_true", help="include --save-json (pycocotools) in the timing")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        child(args)
        return

    models = []
    tmp = Path(tempfile.mkdtemp(prefix="eval_speed_"))
    models.append(("untrained", make_untrained(tmp / "untrained.pt", args.cfg)))
    if args.weights:
        models.append(("trained", Path(args.weights)))
    else:
        print("No --weights given: timing the untrained model only (pass a trained checkpoint for the other row).")

    import torch

    print(f"coco128 val, batch {args.batch_size}, device {args.device}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, repeats {args.repeats} (medians)\n")
    cols = ["wall", "cpu"] + list(STAGES)
    print("| model | img | " + " | ".join(cols) + " | NMS ms/img | mAP@.5 | mAP@.5:.95 | NMS time-limit warnings |")
    print("|---|---|" + "---|" * (len(cols) + 4))
    for name, w in models:
        for size in args.sizes:
            runs = [run_one(w, size, args) for _ in range(args.repeats)]
            med = {k: statistics.median(r["t"].get(k, 0.0) for r in runs) for k in cols}
            n = runs[0]["images"]
            print(f"| {name} | {size} | " + " | ".join(f"{med[k]:.2f}" for k in cols) +
                  f" | {med['nms'] / max(n, 1) * 1e3:.1f} | {runs[0]['map50']:.4f} | {runs[0]['map']:.4f} | "
                  f"{max(r['nms_warning'] for r in runs)} (nothing dropped) |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}; cpu = user + sys seconds of the test.py process "
          f"(all threads); stages are wall seconds inside test()")


if __name__ == "__main__":
    main()
