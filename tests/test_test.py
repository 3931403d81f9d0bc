"""test.py: the CLI on a tiny generated dataset, the training-time call, and pycocotools agreement on coco128."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from model_checks import micro_cfg

import test as evaluator
from utils.coco_eval import class_to_category, image_id
from utils.log import LOGGER


# --------------------------------------------------------------------------- fixtures
def make_dataset(root: Path, nc: int = 2) -> Path:
    """A few small images of different aspect ratios with YOLO labels, and a data yaml."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    specs = [("000000000042", 96, 128), ("000000000007", 128, 96), ("img_a", 64, 64), ("img_b", 80, 120)]
    for stem, h, w in specs:
        im = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        lines = []
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(0, nc))
            bw, bh = rng.uniform(0.2, 0.5, 2)
            cx, cy = rng.uniform(0.3, 0.7, 2)
            x1, y1 = int((cx - bw / 2) * w), int((cy - bh / 2) * h)
            x2, y2 = int((cx + bw / 2) * w), int((cy + bh / 2) * h)
            im[y1:y2, x1:x2] = (255, 0, 0) if c else (0, 255, 0)
            lines.append(f"{c} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), im)
        (root / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    data = {"path": str(root), "train": "images", "val": "images", "nc": nc, "names": ["green", "red"][:nc]}
    f = root / "data.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from models.experimental import fused_checkpoint
    from models.yolo import Model
    from utils.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    data = make_dataset(root / "ds")
    torch.manual_seed(0)
    model = Model("cfg/training/yolov7-tiny-ms0.yaml", nc=2)
    model.names = ["green", "red"]
    ckpt = save_checkpoint({"cfg": model.yaml, "state_dict": model.state_dict(), "names": model.names, "nc": 2,
                            "fused": False}, root / "tiny.pt")
    fused = save_checkpoint(fused_checkpoint(model), root / "tiny-fused.pt")
    return {"root": root, "data": data, "ckpt": ckpt, "fused": fused, "model": model}


class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.extend(record.getMessage().splitlines())


@pytest.fixture
def logs():
    h = LogCapture()
    LOGGER.addHandler(h)
    yield h.lines
    LOGGER.removeHandler(h)


# --------------------------------------------------------------------------- helpers
def test_image_id_and_category_mapping():
    assert image_id("/a/b/000000000042.jpg") == 42
    assert image_id("x/img_a.png") == "img_a"
    assert class_to_category({"coco": True}, 80)[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]
    assert class_to_category({"category_ids": [5, 9]}, 2) == [5, 9]
    assert class_to_category({}, 3) == [0, 1, 2]


# --------------------------------------------------------------------------- CLI
def test_cli_writes_plots_json_and_rows(tiny, logs):
    out = tiny["root"] / "runs"
    res = evaluator.main(["--weights", str(tiny["ckpt"]), "--data", str(tiny["data"]), "--img-size", "128",
                          "--batch-size", "2", "--device", "cpu", "--save-json", "--save-txt", "--save-conf",
                          "--verbose", "--project", str(out), "--name", "exp"])
    (mp, mr, map50, map_, *losses), maps, times = res
    assert 0 <= map_ <= map50 <= 1 and maps.shape == (2,) and len(times) == 6
    d = out / "exp"
    for f in ("confusion_matrix.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png",
              "val_batch0_labels.jpg", "val_batch0_pred.jpg", "val_batch1_labels.jpg", "val_batch1_pred.jpg"):
        assert (d / f).is_file() and (d / f).stat().st_size > 1000, f
    preds = json.loads((d / "tiny_predictions.json").read_text())
    assert preds, "an untrained model still scores above conf 0.001"
    ids = {p["image_id"] for p in preds}
    assert ids <= {42, 7, "img_a", "img_b"}
    assert all(p["category_id"] in (0, 1) and len(p["bbox"]) == 4 and p["bbox"][2] >= 0 for p in preds)
    gt = json.loads((d / "data_val_gt.json").read_text())
    assert {im["id"] for im in gt["images"]} == {42, 7, "img_a", "img_b"}
    assert {im["width"] for im in gt["images"] if im["id"] == 42} == {128}
    assert len(list((d / "labels").glob("*.txt"))) == 4
    header = next(i for i, line in enumerate(logs) if line.split()[:2] == ["Class", "Images"])
    row = logs[header + 1].split()
    assert row[0] == "all" and row[1] == "4" and len(row) == 7
    assert any(line.strip().startswith("Average Precision") for line in logs)
    assert any(line.startswith("Speed:") for line in logs)
    # the json rows are whole-image pixel boxes: inside the original image sizes
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    for p in preds:
        w, h = sizes[p["image_id"]]
        x, y, bw, bh = p["bbox"]
        assert -1e-3 <= x and x + bw <= w + 1e-3 and -1e-3 <= y and y + bh <= h + 1e-3


def test_cli_fused_checkpoint_and_increment(tiny):
    out = tiny["root"] / "runs2"
    args = ["--weights", str(tiny["fused"]), "--data", str(tiny["data"]), "--img-size", "96", "--device", "cpu",
            "--project", str(out), "--name", "exp", "--conf-thres", "0.01"]
    a = evaluator.main(args)
    b = evaluator.main(args)
    assert (out / "exp").is_dir() and (out / "exp2").is_dir()
    assert a[0][:4] == b[0][:4]  # deterministic


def test_cli_rejects_mismatched_classes(tiny, tmp_path):
    bad = yaml.safe_load(tiny["data"].read_text())
    bad.update(nc=3, names=["a", "b", "c"])
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="nc=2"):
        evaluator.main(["--weights", str(tiny["ckpt"]), "--data", str(f), "--img-size", "64", "--device", "cpu",
                        "--project", str(tmp_path), "--name", "x"])


def test_training_call_leaves_model_unfused(tiny, tmp_path):
    from utils.data.loader import create_dataloader
    from utils.loss import ComputeLoss

    model = tiny["model"]
    model.hyp = yaml.safe_load(Path("data/hyp.scratch.tiny.yaml").read_text())
    model.train()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    data = yaml.safe_load(tiny["data"].read_text())
    loader = create_dataloader(data["path"] + "/images", 96, 4, 32, pad=0.5, rect=True, workers=0, nc=2)[0]
    (mp, mr, map50, map_, *losses), maps, _ = evaluator.test(
        str(tiny["data"]), model=model, dataloader=loader, compute_loss=ComputeLoss(model), plots=False,
        save_dir=tmp_path, imgsz=96, batch_size=4)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == n_bn > 0
    assert model.training, "the caller's train/eval mode is restored"
    assert len(losses) == 3 and sum(losses) > 0


# --------------------------------------------------------------------------- coco128 agreement
class LabelDetector(torch.nn.Module):
    """A stand-in detector for the agreement test: it 'predicts' the batch's labels, perturbed.

    It replays the targets of a dataloader batch by batch (same order as the evaluation),
    returning decoded predictions (B, N, 85) with jittered boxes, random scores, duplicates,
    wrong classes, missed objects and false positives, so mAP is far from 0 and 1.
    """

    def __init__(self, batches, nc=80, seed=0):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.batches = list(batches)
        self.nc, self.names, self.stride = nc, [str(i) for i in range(nc)], torch.tensor([8.0, 16.0, 32.0])
        self.rng = np.random.default_rng(seed)

    def forward(self, img, augment=False):
        targets = self.batches.pop(0)
        b, _, h, w = img.shape
        rows = []
        for t in targets.numpy():
            i, c, cx, cy, bw, bh = t
            for _ in range(int(self.rng.integers(0, 3))):  # 0 (missed), 1 or 2 (duplicate) detections
                j = self.rng.normal(0, 0.08, 4)
                box = [cx * w + j[0] * bw * w, cy * h + j[1] * bh * h, bw * w * (1 + j[2]), bh * h * (1 + j[3])]
                cls = int(c) if self.rng.random() > 0.1 else int(self.rng.integers(0, self.nc))
                rows.append((int(i), box, float(self.rng.uniform(0.05, 1.0)), cls))
        for i in range(b):  # false positives
            for _ in range(int(self.rng.integers(0, 4))):
                box = [self.rng.uniform(0, w), self.rng.uniform(0, h),
                       self.rng.uniform(8, w / 2), self.rng.uniform(8, h / 2)]
                rows.append((i, box, float(self.rng.uniform(0.01, 0.6)), int(self.rng.integers(0, self.nc))))
        n = max([sum(r[0] == i for r in rows) for i in range(b)] + [1])
        out = torch.zeros(b, n, 5 + self.nc)
        fill = [0] * b
        for i, box, s, c in rows:
            out[i, fill[i], :4] = torch.tensor(box)
            out[i, fill[i], 4] = s
            out[i, fill[i], 5 + c] = 1.0
            fill[i] += 1
        return out, None


def test_coco128_agreement_with_pycocotools(coco128_dir, tmp_path):
    from utils.data.loader import create_dataloader

    data = {"path": str(coco128_dir), "train": "images/train2017", "val": "images/val2017", "coco": True,
            "nc": 80, "names": [str(i) for i in range(80)]}
    loader = create_dataloader(str(coco128_dir / "images/val2017"), 320, 32, 32, pad=0.5, rect=True, workers=0,
                               nc=80)[0]
    batches = [targets.clone() for _, targets, _, _ in loader]
    report = {}
    (_, _, map50, map_, *_), _, _ = evaluator.test(data, model=LabelDetector(batches), dataloader=loader,
                                                   save_json=True, plots=False, save_dir=tmp_path, report=report)
    assert 0.2 < report["map"] < 0.9 and 0.3 < report["map50"] < 0.95, report
    coco = report["coco_stats"]
    assert abs(report["map50"] - coco[1]) <= 0.002, (report["map50"], coco[1])
    assert abs(report["map"] - coco[0]) <= 0.002, (report["map"], coco[0])
    preds = json.loads(Path(report["pred_json"]).read_text())
    assert {p["category_id"] for p in preds} <= set(class_to_category({"coco": True}, 80))
    assert all(isinstance(p["image_id"], int) for p in preds)


@pytest.mark.slow
def test_coco128_cli_untrained_model_agreement(coco128_dir, tiny, tmp_path):
    """A real network over coco128 val through the CLI: our mAP and pycocotools' on its detections."""
    from models.yolo import Model
    from utils.checkpoint import save_checkpoint

    torch.manual_seed(1)
    m = Model("cfg/training/yolov7-tiny-ms0.yaml", nc=80)
    w = save_checkpoint({"cfg": m.yaml, "state_dict": m.state_dict(), "nc": 80, "fused": False}, tmp_path / "u.pt")
    data = Path(__file__).resolve().parents[1] / "data" / "coco128.yaml"
    report = {}
    evaluator.test(str(data), str(w), imgsz=160, batch_size=64, save_json=True, plots=False, device="cpu",
                   save_dir=tmp_path, report=report)
    assert report["images"] == 128
    assert abs(report["map50"] - report["coco_stats"][1]) <= 0.002
    assert abs(report["map"] - report["coco_stats"][0]) <= 0.002


def test_cli_augment_single_cls_hybrid_and_speed(tiny, logs):
    out = tiny["root"] / "runs3"
    evaluator.main(["--weights", str(tiny["ckpt"]), "--data", str(tiny["data"]), "--img-size", "64", "--device",
                    "cpu", "--augment", "--single-cls", "--save-hybrid", "--save-conf", "--v5-metric",
                    "--project", str(out), "--name", "exp"])
    txt = (out / "exp" / "labels" / "img_a.txt").read_text().split("\n")
    rows = [list(map(float, r.split())) for r in txt if r]
    assert rows and all(r[0] == 0 for r in rows)  # single class
    n_labels = len((tiny["root"] / "ds" / "labels" / "img_a.txt").read_text().split())
    assert sum(r[5] == 1.0 for r in rows) >= 1 and n_labels >= 5  # hybrid: labels kept at conf 1
    r = evaluator.main(["--weights", str(tiny["ckpt"]), "--data", str(tiny["data"]), "--img-size", "64",
                        "--device", "cpu", "--task", "speed", "--project", str(out), "--name", "speed"])
    assert len(r) == 1 and len(r[0][2]) == 6
    assert any(line.startswith("Speed:") for line in logs)


# --------------------------------------------------------------------------- any model file, ensembles
MICRO = micro_cfg(nc=2)


def briefly_trained(path: Path, data: Path, seed: int, steps: int) -> Path:
    """A micro MobileOne detector fitted for ``steps`` Adam steps to the generated images (mAP above 0).

    One thread while fitting: a tiny model gains nothing from more, and on a busy machine
    contended threads make each step many times slower.
    """
    from models.yolo import Model
    from utils.checkpoint import save_checkpoint
    from utils.data.loader import create_dataloader
    from utils.loss import ComputeLoss

    torch.manual_seed(seed)
    m = Model(MICRO)
    m.hyp = dict(yaml.safe_load(Path("data/hyp.scratch.tiny.yaml").read_text()), loss_ota=0)
    loss_fn = ComputeLoss(m)
    images = str(data.parent / "images")
    batches = list(create_dataloader(images, 96, 4, 32, pad=0.5, rect=True, workers=0, nc=2)[0])
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m.train()
        for _ in range(steps):
            for img, targets, _, _ in batches:
                loss, _ = loss_fn(m(img.float() / 255), targets)
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return save_checkpoint({"cfg": m.yaml, "state_dict": m.state_dict(), "names": ["green", "red"], "nc": 2,
                            "fused": False}, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two briefly trained micro checkpoints, a dynamic ONNX export of the first and a static one
    (batch 1, 96x96) of the same weights."""
    import shutil

    import export

    root = tmp_path_factory.mktemp("files")
    data = make_dataset(root / "ds")
    a = briefly_trained(root / "a.pt", data, 0, 40)
    b = briefly_trained(root / "b.pt", data, 1, 15)
    export.run(a, img_size=(96, 96), include=["onnx"], dynamic=True)
    s = shutil.copy(a, root / "s.pt")
    export.run(s, img_size=(96, 96), batch_size=1, include=["onnx"])
    e = shutil.copy(a, root / "e.pt")
    export.run(e, img_size=(96, 96), include=["onnx"], dynamic=True, end2end=True, conf_thres=0.25, iou_thres=0.45)
    return {"data": data, "a": a, "b": b, "onnx": root / "a.onnx", "static": root / "s.onnx", "e2e": root / "e.onnx",
            "root": root}


def evaluate(files, weights, **kw):
    kw = dict(dict(imgsz=96, batch_size=2, plots=False, device="cpu", threads=1, save_dir=files["root"] / "out"), **kw)
    return evaluator.test(str(files["data"]), weights, **kw)


def test_onnx_gives_the_checkpoint_map(files):
    (_, _, map50_pt, map_pt, *_), maps_pt, _ = evaluate(files, files["a"])
    (_, _, map50_ox, map_ox, *_), maps_ox, _ = evaluate(files, files["onnx"])
    assert map50_pt > 0.05, "the micro model must score well above 0 for the comparison to mean anything"
    assert map50_ox == pytest.approx(map50_pt, rel=1e-4, abs=1e-9)
    assert map_ox == pytest.approx(map_pt, rel=1e-4, abs=1e-9)
    assert np.allclose(maps_ox, maps_pt, rtol=1e-4, atol=1e-9)


def test_static_onnx_sets_its_size_and_batch(files, logs):
    """A fixed-shape file is evaluated at its own size (square) and batch, and the run says so."""
    from utils.data.loader import create_dataloader

    d = yaml.safe_load(files["data"].read_text())
    square = create_dataloader(d["path"] + "/images", 96, 2, 32, pad=0.5, rect=False, workers=0, nc=2)[0]
    (_, _, map50_pt, map_pt, *_), _, _ = evaluate(files, files["a"], dataloader=square)
    (_, _, map50, map_, *_), _, times = evaluate(files, files["static"], imgsz=128, batch_size=4)
    assert times[3:] == (96, 96, 1)
    assert any("fixed input of 96x96" in line for line in logs)
    assert any("batches of 1" in line for line in logs)
    assert map50_pt > 0 and map50 == pytest.approx(map50_pt, rel=1e-4) and map_ == pytest.approx(map_pt, rel=1e-4)


def test_no_rect_scores_a_pt_as_its_fixed_size_export(files, logs, tmp_path):
    """``--no-rect`` letterboxes a .pt square, as its fixed-size export runs: the same mAP as that file
    (rectangular batches score otherwise here), and every run says which letterbox it used."""
    rect = evaluate(files, files["a"])[0][2:4]
    assert "letterbox: rectangular batches at --img-size 96 (aspect ratio kept, each batch padded to its images' " \
           "shape; --no-rect for square 96x96 as a fixed-size export runs)" in logs
    fixed = evaluate(files, files["static"])[0][2:4]
    assert any(line.startswith("letterbox: square 96x96, because the model file has a fixed 96x96 input")
               for line in logs)
    logs.clear()
    square = evaluator.main(["--weights", str(files["a"]), "--data", str(files["data"]), "--img-size", "96",
                             "--batch-size", "2", "--device", "cpu", "--threads", "1", "--no-rect",
                             "--project", str(tmp_path), "--name", "square"])[0][2:4]
    assert [line for line in logs if line.startswith("letterbox:")] == [
        "letterbox: square 96x96 (--no-rect), as a fixed-size export of this model runs"]
    assert fixed[0] > 0.05 and square == pytest.approx(fixed, rel=1e-4, abs=1e-9)
    assert rect != pytest.approx(fixed, rel=1e-3), "rectangular and square inputs should score differently here"


def test_end2end_onnx_uses_its_own_nms(files, logs):
    """An --end2end file brings its NMS and thresholds: it scores as the .pt at those thresholds."""
    ref = evaluate(files, files["a"], conf_thres=0.25, iou_thres=0.45)[0][:4]
    assert evaluate(files, files["e2e"])[0][:4] == pytest.approx(ref, rel=1e-4)
    assert any("end2end graph" in line and "conf 0.25" in line for line in logs)


def test_ensemble_of_weights(files, tmp_path):
    """Several --weights: predictions joined, then one NMS (a model with itself = the model alone)."""
    single = evaluate(files, files["a"])[0][:4]
    assert evaluate(files, [files["a"], files["a"]])[0][:4] == pytest.approx(single, rel=1e-9)
    b = evaluate(files, files["b"])[0][:4]
    both = evaluator.main(["--weights", str(files["a"]), str(files["onnx"]), str(files["b"]), "--data",
                           str(files["data"]), "--img-size", "96", "--batch-size", "2", "--device", "cpu",
                           "--project", str(tmp_path), "--name", "ens", "--save-json", "--threads", "1"])[0][:4]
    preds = json.loads((tmp_path / "ens" / "a_predictions.json").read_text())
    assert preds and both != single and both != b


def test_training_call_verbose_table_and_progress_bar(files, logs, capsys):
    """train.py's end-of-run call (verbose=True) prints a row per class; the tqdm bar is shown."""
    from models.experimental import attempt_load

    model = attempt_load(files["a"])
    evaluate(files, None, model=model, verbose=True)
    rows = [line.split() for line in logs]
    assert any(r[:1] == ["green"] and len(r) == 7 for r in rows) and any(r[:1] == ["red"] for r in rows)
    assert "mAP@.5:.95" in capsys.readouterr().err  # the progress bar carries the table header
    logs.clear()
    evaluate(files, None, model=model, verbose=False, progress=False)
    assert not any(line.split()[:1] == ["green"] for line in logs), "no per-class rows in per-epoch validation"
    assert "it/s" not in capsys.readouterr().err


def test_threads_and_no_trace(files, logs, tmp_path):
    before = torch.get_num_threads()
    try:
        evaluator.main(["--weights", str(files["onnx"]), "--data", str(files["data"]), "--img-size", "96",
                        "--device", "cpu", "--threads", "1", "--no-trace", "--project", str(tmp_path)])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert any(line.startswith("--no-trace") for line in logs)


# --------------------------------------------------------------------------- one-line CLI errors
def cli_error(argv, capsys) -> tuple[int, str]:
    """Exit code and the error line of a failed run (the last stderr line; logging may precede it)."""
    import sys

    from utils.cli import run_cli

    for h in LOGGER.handlers:  # a handler made in an earlier test may hold that test's closed capture stream
        if type(h) is logging.StreamHandler:
            h.stream = sys.stderr
    rc = run_cli(evaluator.cli, argv, prog="test.py")
    err = capsys.readouterr().err
    assert "Traceback" not in err and sum(line.startswith("test.py: error:") for line in err.splitlines()) == 1
    return rc, err.strip().splitlines()[-1]


@pytest.mark.parametrize("args, words", [
    (["--img-size", "0"], "--img-size 0"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--conf-thres", "1.5"], "--conf-thres 1.5"),
    (["--iou-thres", "-0.1"], "--iou-thres -0.1"),
    (["--threads", "0"], "--threads 0"),
    (["--workers", "-1"], "--workers -1"),
    (["--device", "5"], "--device '5'"),
])
def test_cli_bad_values_are_one_line(files, tmp_path, capsys, args, words):
    base = ["--weights", str(files["a"]), "--data", str(files["data"]), "--project", str(tmp_path)]
    rc, err = cli_error(base + args, capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("test.py: error:") and words in err, err
    assert "Traceback" not in err and not any(tmp_path.iterdir()), "nothing written on a bad flag"


def test_cli_bad_files_are_one_line(files, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(300))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [unclosed\n")
    cases = [(["--weights", str(tmp_path / "missing.pt")], "missing.pt"),
             (["--weights", str(junk)], "junk.pt"),
             (["--weights", str(tmp_path / "missing.onnx")], "missing.onnx"),
             (["--data", str(tmp_path / "nope.yaml")], "nope.yaml"),
             (["--data", str(bad_yaml)], "bad.yaml")]
    for args, words in cases:
        argv = ["--weights", str(files["a"]), "--data", str(files["data"]), "--device", "cpu",
                "--project", str(tmp_path / "runs")] + args
        rc, err = cli_error(argv, capsys)
        assert rc == 2 and len(err.splitlines()) == 1 and words in err and "Traceback" not in err, (args, err)
    assert not any((tmp_path / "runs").iterdir()), "a failed run leaves no empty run folder"


def test_cli_process_exit_code_and_help():
    import subprocess
    import sys

    root = Path(evaluator.__file__).resolve().parent
    p = subprocess.run([sys.executable, "test.py", "--img-size", "0"], cwd=root, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == "test.py: error: --img-size 0: must be a positive number of pixels"
    with pytest.raises(SystemExit) as e:
        evaluator.parse_opt(["--help"])
    assert e.value.code == 0


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        evaluator.parse_opt(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("(default: 640)", "(default: 32)", "(default: 0.001)", "(default: 0.65)", "(default: val)",
                 "(default: runs/test)", "(default: ['yolov7-tiny-ms0.pt'])", "(default: 8)"):
        assert text in out, text
