"""hubconf.py: load + detect, the Detector class, agreement with detect.py, and the YOLOv5-style hub API."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from deploy_utils import NAMES, make_checkpoint, make_image

import detect as detect_cli
import hubconf

CONF = 0.3


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("hub")
    return make_checkpoint(d / "best.pt"), make_image(d / "img.jpg", 120, 150, seed=3)


@pytest.fixture(scope="module")
def model(files):
    return hubconf.load(files[0])


def test_detect_path_and_array_agree(model, files):
    _, img = files
    r = hubconf.detect(model, img, img_size=160, conf_thres=CONF)
    n = len(r["boxes"])
    assert n > 0
    assert r["boxes"].shape == (n, 4) and r["boxes"].dtype == np.float32
    assert r["scores"].shape == (n,) and r["classes"].shape == (n,) and r["classes"].dtype == np.int64
    assert r["names"] == NAMES
    assert (r["scores"] > CONF).all() and (np.diff(r["scores"]) <= 0).all()
    b = r["boxes"]
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 150).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 120).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    r2 = hubconf.detect(model, cv2.imread(str(img)), img_size=160, conf_thres=CONF)
    for k in ("boxes", "scores", "classes"):
        assert np.array_equal(r[k], r2[k])
    # weights path instead of a model; the Detector class keeps settings
    r3 = hubconf.detect(files[0], img, img_size=160, conf_thres=CONF)
    assert np.allclose(r3["boxes"], b)
    det = hubconf.Detector(files[0], img_size=160, conf_thres=CONF)
    assert det.names == NAMES
    r4 = det(img)
    assert np.allclose(r4["boxes"], b) and np.array_equal(r4["classes"], r["classes"])
    assert len(det(img, classes=[1])["classes"]) == int((r["classes"] == 1).sum())


def test_boxes_match_detect_py_labels(model, files, tmp_path):
    """hubconf's original-pixel boxes == detect.py's saved YOLO labels (same pipeline, two front ends)."""
    w, img = files
    r = hubconf.detect(model, img, img_size=160, conf_thres=CONF)
    res = detect_cli.run(weights=w, source=img, img_size=160, conf_thres=CONF, save_txt=True, nosave=True,
                         project=tmp_path, name="exp")
    lb = np.loadtxt(res["save_dir"] / "labels" / "img.txt", ndmin=2)
    assert len(lb) == len(r["boxes"])
    h, wd = 120, 150
    xyxy = np.stack([(lb[:, 1] - lb[:, 3] / 2) * wd, (lb[:, 2] - lb[:, 4] / 2) * h,
                     (lb[:, 1] + lb[:, 3] / 2) * wd, (lb[:, 2] + lb[:, 4] / 2) * h], 1)
    # detect.py writes boxes rounded to pixels, in reverse score order
    assert np.abs(xyxy[::-1] - r["boxes"]).max() <= 0.5 + 1e-3
    assert np.array_equal(lb[::-1, 0].astype(int), r["classes"])


def test_bad_images_are_rejected_clearly(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        hubconf.detect(model, tmp_path / "nope.jpg")
    with pytest.raises(ValueError, match="uint8"):
        hubconf.detect(model, np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="BGR"):
        hubconf.detect(model, np.zeros((32, 32, 5), np.uint8))
    gray = hubconf.detect(model, np.full((64, 64), 128, np.uint8), img_size=64, conf_thres=0.99)
    assert gray["boxes"].shape == (0, 4)


def test_torch_hub_entry_point(files):
    repo = Path(hubconf.__file__).resolve().parent
    m = torch.hub.load(str(repo), "load", source="local", weights=str(files[0]))
    assert m.names == NAMES and not m.training


# --------------------------------------------------------------------------- YOLOv5-style hub API
SIZE = 96


@pytest.fixture(scope="module")
def hub(files):
    m = hubconf.custom(files[0], device="cpu")
    m.conf = CONF
    return m


@pytest.fixture(scope="module")
def served(files):
    """files[1] served over http on 127.0.0.1 (a local server: nothing leaves the machine)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(files[1].parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{files[1].name}"
    server.shutdown()


def test_every_input_kind_gives_the_same_boxes(hub, files, served):
    from PIL import Image

    path = files[1]
    bgr = cv2.imread(str(path))
    ref = hub(path, size=SIZE)
    assert isinstance(ref, hubconf.Detections) and len(ref) == 1 and len(ref.xyxy[0]) > 0
    assert ref.files == ["img.jpg"] and ref.names == NAMES
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    singles = {"str": str(path), "url": served, "pil": Image.open(path), "bgr": bgr,
               "tensor": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
               "uint8 tensor": torch.from_numpy(rgb).permute(2, 0, 1)}
    for kind, x in singles.items():
        r = hub(x, size=SIZE)
        assert torch.allclose(r.xyxy[0], ref.xyxy[0], atol=1e-3), kind
    assert torch.allclose(hub(rgb, size=SIZE, rgb=True).xyxy[0], ref.xyxy[0], atol=1e-3)
    # a list is one batch; each image keeps its own boxes, in its own pixels
    small = cv2.resize(bgr, (75, 60))
    batch = hub([path, small, Image.open(path)], size=SIZE)
    assert len(batch) == 3 and batch.shape[0] == 3 and batch.files[1] == "image1.jpg"
    alone = hub(small, size=SIZE)
    for b, r in ((batch.xyxy[0], ref.xyxy[0]), (batch.xyxy[2], ref.xyxy[0]), (batch.xyxy[1], alone.xyxy[0])):
        assert len(b) > 0 and (b[:, 2] <= 150 + 1e-3).all()
        # the batch may pad to another shape than one image alone: the same objects, boxes within a few px
        assert abs(len(b) - len(r)) <= max(2, len(r) // 4)
    with pytest.raises(TypeError, match="expected a path"):
        hub(3.5)
    with pytest.raises(TypeError, match="unknown setting"):
        hub(bgr, confidence=0.5)


def test_settings_conf_classes_max_det(hub, files):
    r = hub(files[1], size=SIZE)
    n = len(r.xyxy[0])
    assert n > 2
    assert len(hub(files[1], size=SIZE, max_det=2).xyxy[0]) == 2
    assert len(hub(files[1], size=SIZE, conf=0.99).xyxy[0]) == 0
    only = hub(files[1], size=SIZE, classes=[1]).xyxy[0]
    assert len(only) == int((r.xyxy[0][:, 5] == 1).sum()) and (only[:, 5] == 1).all()
    hub.classes = [1]
    try:
        assert len(hub(files[1], size=SIZE).xyxy[0]) == len(only)
    finally:
        hub.classes = None


def test_results_methods(hub, files, tmp_path, capsys):
    r = hub([files[1], cv2.imread(str(files[1]))], size=SIZE)
    h, w = 120, 150
    for i in range(2):
        xyxy, xywh, xyxyn, xywhn = r.xyxy[i], r.xywh[i], r.xyxyn[i], r.xywhn[i]
        assert xyxy.shape[1] == xywh.shape[1] == 6
        assert torch.allclose(xywh[:, 0], (xyxy[:, 0] + xyxy[:, 2]) / 2)
        assert torch.allclose(xyxyn[:, :4], xyxy[:, :4] / torch.tensor([w, h, w, h]))
        assert torch.allclose(xywhn[:, 2:4], xywh[:, 2:4] / torch.tensor([w, h]))
        assert (xyxyn[:, :4] >= 0).all() and (xyxyn[:, :4] <= 1).all()
    df = r.pandas().xyxy[0]
    assert list(df.columns) == ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
    assert len(df) == len(r.xyxy[0]) and set(df["name"]) <= set(NAMES)
    assert list(r.pandas().xywhn[1].columns)[:4] == ["xcenter", "ycenter", "width", "height"]
    assert isinstance(r.xyxy[0], torch.Tensor)  # pandas() returns a copy
    r.print()
    out = capsys.readouterr().out
    assert "image 1/2: 120x150" in out and "Speed:" in out
    r.show()  # headless here: a warning, no crash
    frames = r.render()
    assert len(frames) == 2 and frames[0].shape == (120, 150, 3)
    assert np.abs(frames[0].astype(int) - r.ims[0].astype(int)).max() > 50
    d = r.save(tmp_path / "out")
    assert sorted(p.name for p in d.iterdir()) == ["image1.jpg", "img.jpg"]
    assert r.save(tmp_path / "out") == tmp_path / "out2"
    crops = r.crop(save=True, save_dir=tmp_path / "c")
    assert len(crops) == sum(len(p) for p in r.xyxy)
    for c in crops:
        assert c["file"].is_file() and c["file"].parent.name == c["label"] and c["im"].size > 0
    assert all("file" not in c for c in r.crop(save=False))


def test_hub_entries_custom_and_named(files):
    repo = Path(hubconf.__file__).resolve().parent
    m = torch.hub.load(str(repo), "custom", str(files[0]), source="local", device="cpu")
    assert type(m).__name__ == "AutoShape" and m.names == NAMES and not m.training  # torch.hub imports its own copy
    r = torch.hub.load(str(repo), "yolov7_tiny_ms0", source="local", classes=2, device="cpu")
    assert r.names == ["0", "1"] and r.backend.format == "pytorch"
    out = r(np.zeros((64, 64, 3), np.uint8), size=64, conf=0.0)
    assert len(out.xyxy[0]) > 0  # random init: conf 0 keeps boxes
    p = hubconf.yolov7_tiny_ms0(pretrained=files[0], device="cpu")
    assert p.names == NAMES
    with pytest.raises(ValueError, match="local checkpoint"):
        hubconf.yolov7_tiny_ms0(pretrained=True)
    assert "pandas" in hubconf.dependencies and "PIL" in hubconf.dependencies
