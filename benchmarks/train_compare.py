"""Training throughput of this project's train.py against the original YOLOv7 code, in one run.

Both programs train the same yaml from scratch with their own train.py and the same flags;
runs alternate (original, ours, original, ours, ...) so background load hits both alike. For each
run the benchmark reads the progress bars as they are printed and takes the wall time from the
first progress line of epoch 2 to the first progress line of epoch ``--epochs`` (1-based): whole
steady-state epochs, including everything a program does between its batch loops (checkpoints,
EMA, BN passes, logging). The whole run is the process's wall time from launch to exit, and
start-up the part before the first progress line (imports, model build, label cache, loader
workers, the first batch). Peak RSS is the largest resident set of any process of the run.

The original code is not part of this project. Prepare it by hand in a scratch folder:
clone WongKinYiu/yolov7, add the MobileOne plugin of the seed design (models/common.py and
parse_model), copy cfg/training/yolov7-tiny-ms0.yaml there, and patch its ``torch.load`` calls
with ``weights_only=False`` for torch >= 2.6. Then, on an otherwise idle machine::

    python benchmarks/train_compare.py --yolov7 /path/to/yolov7 --data /path/to/coco128.yaml

Each program trains on its own temporary copy of ``--data`` (both write label caches beside the
labels, in different formats).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_info import cpu_header  # noqa: E402

EPOCH_LINE = re.compile(r"^\s*(\d+)/(\d+)\s")


def _tree_rss_kb(pid: int) -> int:
    """Largest VmRSS (kB) among ``pid`` and its descendants."""
    best = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        best = max(best, int(line.split()[1]))
                        break
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return best


def _watch_rss(proc: subprocess.Popen, peak: list[int]) -> None:
    while proc.poll() is None:
        peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
        time.sleep(0.25)


def _epoch_starts(stream, log) -> dict[int, float]:
    """Read a child's output; return the time each epoch index (0-based) first showed a progress line."""
    starts: dict[int, float] = {}
    buf = b""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        log.write(chunk)
        buf += chunk
        *lines, buf = re.split(rb"[\r\n]", buf)
        now = time.perf_counter()
        for raw in lines:
            m = EPOCH_LINE.match(raw.decode(errors="replace"))
            if m:
                starts.setdefault(int(m.group(1)), now)
    return starts


def run_one(program: Path, cfg: str, args: argparse.Namespace, data: str, workdir: Path, tag: str) -> dict:
    """Train once with ``program``'s train.py on ``data``: steady-state images/s, whole-process wall,
    start-up (launch to the first progress line of epoch 1) and peak RSS."""
    cmd = [sys.executable, "train.py", "--cfg", cfg, "--data", data, "--hyp", args.hyp,
           "--img-size", str(args.img), str(args.img), "--batch-size", str(args.batch), "--epochs", str(args.epochs),
           "--notest", "--noautoanchor", "--device", "cpu", "--weights", "", "--workers", str(args.workers),
           "--project", str(workdir), "--name", tag, "--exist-ok"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log_path = workdir / f"{tag}.log"
    with open(log_path, "wb") as log:
        t_launch = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=program, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        peak = [0]
        watcher = threading.Thread(target=_watch_rss, args=(proc, peak), daemon=True)
        watcher.start()
        starts = _epoch_starts(proc.stdout, log)
        rc = proc.wait()
        t_exit = time.perf_counter()
        watcher.join()
    first, last = 1, args.epochs - 1
    if rc != 0 or first not in starts or last not in starts:
        raise RuntimeError(f"{tag}: run failed or printed no epoch progress (exit {rc}); see {log_path}")
    n_images = args.images
    seconds = starts[last] - starts[first]
    return {"seconds": seconds, "img_s": n_images * (last - first) / seconds, "rss_gb": peak[0] / 1024 ** 2,
            "wall_s": t_exit - t_launch, "startup_s": starts.get(0, t_exit) - t_launch}


def private_data(data: str, workdir: Path, tag: str) -> str:
    """A copy of the dataset (images and labels, no label caches) for one program, and its yaml.

    Both programs write ``labels/<split>.cache`` beside the labels in different formats; on one
    shared copy each would find the other's cache and fail or rebuild it.
    """
    import shutil

    import yaml

    cfg = yaml.safe_load(Path(data).read_text())
    out = dict(cfg)
    for split in ("train", "val", "test"):
        if not cfg.get(split):
            continue
        src = Path(cfg[split])
        root = next((q.parent for q in src.parents if q.name == "images"), None)
        if root is None:
            raise SystemExit(f"{data}: {split} path {src} is not inside an 'images' folder")
        dst = workdir / f"data_{tag}" / root.name
        if not dst.exists():
            shutil.copytree(root, dst, ignore=shutil.ignore_patterns("*.cache"))
        out[split] = str(dst / src.relative_to(root))
    path = workdir / f"data_{tag}.yaml"
    path.write_text(yaml.safe_dump(out, sort_keys=False))
    return str(path)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--yolov7", required=True, help="scratch checkout of the original YOLOv7 with the plugin")
    p.add_argument("--data", required=True,
                   help="dataset yaml with absolute paths (each program trains on its own copy)")
    p.add_argument("--images", type=int, default=128, help="training images per epoch (coco128: 128)")
    p.add_argument("--hyp", default="data/hyp.scratch.tiny.yaml", help="hyp yaml, relative to each program")
    p.add_argument("--models", nargs="+", default=["yolov7-tiny-ms0", "yolov7-tiny"])
    p.add_argument("--img", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4, help="epochs 2..epochs are timed (the last one's loop excluded)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds per model; medians are reported")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_opt(argv)
    programs = {"original YOLOv7": Path(args.yolov7).resolve(), "this project": ROOT}
    rows = []
    with tempfile.TemporaryDirectory(prefix="train_compare_") as tmp:
        data = {name: private_data(args.data, Path(tmp), f"p{i}") for i, name in enumerate(programs)}
        for model in args.models:
            res: dict[str, list[dict]] = {k: [] for k in programs}
            for r in range(args.rounds):
                for name, prog in programs.items():
                    out = run_one(prog, f"cfg/training/{model}.yaml", args, data[name], Path(tmp),
                                  f"{model}_{r}_{len(res[name])}_{'orig' if prog != ROOT else 'ours'}")
                    res[name].append(out)
                    print(f"{model} | {name} | round {r + 1}: {out['img_s']:.2f} img/s, "
                          f"whole run {out['wall_s']:.1f} s (start-up {out['startup_s']:.1f} s), "
                          f"{out['rss_gb']:.2f} GB", flush=True)
            med = {k: {q: statistics.median(o[q] for o in v) for q in ("img_s", "wall_s", "startup_s")}
                   | {"rss_gb": max(o["rss_gb"] for o in v)} for k, v in res.items()}
            rows.append((model, med))
    print(f"\n{cpu_header()}")
    print(f"img {args.img}, batch {args.batch}, {args.epochs} epochs (epochs 2-{args.epochs - 1} timed), "
          f"{args.rounds} alternating round(s), hyp {args.hyp}\n")
    print("| model | program | steady img/s | whole run s | start-up s | peak RSS GB |\n|---|---|---:|---:|---:|---:|")
    for model, med in rows:
        for name, m in med.items():
            print(f"| {model} | {name} | {m['img_s']:.2f} | {m['wall_s']:.1f} | {m['startup_s']:.1f} | "
                  f"{m['rss_gb']:.2f} |")
    print("\n| model | steady-state speed ratio | whole-run speed ratio |\n|---|---:|---:|")
    for model, med in rows:
        o, p = med["original YOLOv7"], med["this project"]
        print(f"| {model} | {p['img_s'] / o['img_s']:.2f}x | {o['wall_s'] / p['wall_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
