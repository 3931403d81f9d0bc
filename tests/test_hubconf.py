"""hubconf.py: load + detect on paths and arrays, the Detector class, agreement with detect.py."""
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
