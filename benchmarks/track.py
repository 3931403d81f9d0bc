"""MOTA, IDF1 and per-frame cost of ByteTrack and BoT-SORT on generated videos of moving shapes.

Each video comes from ``utils.data.shapes_video`` (two shapes crossing, shapes entering and leaving,
one hidden for a few frames; ground truth known). Two detection sources feed the trackers:

- ``noisy GT``: the ground truth turned into detections (10 % missed, jittered boxes, low scores
  under occlusion, spurious low-score boxes): the tracker alone;
- ``--weights``: a detector run on the frames (letterbox, model, NMS at the tracker's low
  threshold, as ``detect.py --track`` does): what a user gets end to end.

    python benchmarks/track.py                                            # noisy GT only
    python benchmarks/track.py --weights runs/train/exp/weights/best.pt   # + the detector (any model file)
    python benchmarks/track.py --weights best.pt --img-size 192 --seeds 0 1 2 --threads 2

Prints a markdown table per source and tracker: MOTA, IDF1, ID switches, misses, false positives
(summed over the seeds' videos), detection ms per frame (pre-process + inference + NMS) and the
tracker's ms per frame (``update``, camera-motion compensation included).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.cpu_info import cpu_header  # noqa: E402
from utils.data.shapes_video import Video, make_video, noisy_detections  # noqa: E402
from utils.tracking import create_tracker, load_tracker_config  # noqa: E402
from utils.tracking.evaluate import mot_scores, xyxy_rows  # noqa: E402

TRACKERS = ("bytetrack", "botsort")


@torch.no_grad()
def detect_frames(model, frames: list[np.ndarray], img_size: int, conf: float, iou: float) -> tuple[list, float]:
    """Per-frame (n, 6) detections in frame pixels and the mean detection ms per frame."""
    from utils.boxes import scale_coords
    from utils.data.preprocess import preprocess, to_tensor

    shape, auto = model.input_size(img_size)
    out, total = [], 0.0
    for im in frames:
        t0 = time.perf_counter()
        chw, _ = preprocess(im, shape, model.stride, auto)
        x = to_tensor(chw, model.device, model.fp16)
        det = model.predict(x, conf, iou)[0].float().cpu().clone()
        if len(det):
            det[:, :4] = scale_coords(x.shape[2:], det[:, :4], im.shape)
        total += time.perf_counter() - t0
        out.append(det.numpy().astype(np.float64))
    return out, 1e3 * total / len(frames)


def track_video(name: str, video: Video, dets: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """The tracker's rows ``frame, id, x1, y1, x2, y2`` and its mean ms per frame."""
    tracker = create_tracker(load_tracker_config(name), video.fps)  # name: built-in tracker or yaml path
    outs, total = [], 0.0
    for d, frame in zip(dets, video.frames):
        t0 = time.perf_counter()
        outs.append(tracker.update(d, frame))
        total += time.perf_counter() - t0
    return xyxy_rows(outs), 1e3 * total / len(dets)


def score(videos: list[Video], dets: list[list[np.ndarray]], name: str) -> dict[str, float]:
    """Scores over all videos (one sequence each, counts summed; MOTA/IDF1 from the summed counts)."""
    gts, hyps, ms = [], [], []
    offset = 0
    for k, (v, d) in enumerate(zip(videos, dets)):
        rows, t = track_video(name, v, d)
        gt = v.gt[:, :6].copy()
        # one long sequence: frames and IDs of later videos shifted so nothing matches across videos
        gt[:, 0] += offset
        gt[:, 1] += 1000 * k
        rows[:, 0] += offset
        rows[:, 1] += 1000 * k
        gts.append(gt)
        hyps.append(rows)
        ms.append(t)
        offset += len(v.frames)
    s = mot_scores(np.concatenate(gts), np.concatenate(hyps))
    s["track_ms"] = float(np.mean(ms))
    return s


def table(rows: list[tuple[str, str, dict, Optional[float]]]) -> str:
    head = ("| detections | tracker | MOTA | IDF1 | ID switches | misses | false positives | GT boxes "
            "| detection ms/frame | tracker ms/frame |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for src, name, s, det_ms in rows:
        lines.append(f"| {src} | {name} | {s['mota']:.3f} | {s['idf1']:.3f} | {int(s['num_switches'])} | "
                     f"{int(s['num_misses'])} | {int(s['num_false_positives'])} | {int(s['num_objects'])} | "
                     f"{'-' if det_ms is None else f'{det_ms:.1f}'} | {s['track_ms']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/track.py", description=__doc__.split("\n")[0])
    p.add_argument("--weights", nargs="*", default=[], help="model file(s) to detect with (any format)")
    p.add_argument("--img-size", type=int, default=192, help="detector input size")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one generated video per seed")
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--iou-thres", type=float, default=0.45)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--trackers", nargs="+", default=list(TRACKERS), help="built-in tracker names or yaml files")
    a = p.parse_args(argv)
    from models.backend import set_threads

    threads = set_threads(a.threads)
    videos = [make_video(s, a.frames) for s in a.seeds]
    w, h = videos[0].frames[0].shape[1], videos[0].frames[0].shape[0]
    rows = []
    noisy = [noisy_detections(v.gt, len(v.frames), (w, h), s) for v, s in zip(videos, a.seeds)]
    for name in a.trackers:
        rows.append(("noisy GT", name, score(videos, noisy, name), None))
    for weights in a.weights:
        from models.backend import load_backend

        model = load_backend(weights, "cpu", threads=threads)
        conf = min(load_tracker_config(n).track_low_thresh for n in a.trackers)
        got = [detect_frames(model, v.frames, a.img_size, conf, a.iou_thres) for v in videos]
        det_ms = float(np.mean([g[1] for g in got]))
        for name in a.trackers:
            rows.append((f"{Path(weights).name} @{a.img_size}", name, score(videos, [g[0] for g in got], name),
                         det_ms))
    print(cpu_header() + f", {threads} threads; {len(videos)} videos x {a.frames} frames of {w}x{h}, "
          f"seeds {' '.join(map(str, a.seeds))}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
