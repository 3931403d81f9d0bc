"""detect.py on generated images, a folder with a corrupt file, a video, ONNX weights and list sources."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from deploy_utils import NAMES, count_frames, make_checkpoint, make_image, make_video

import detect
from utils.cli import run_cli
from utils.data.sources import is_stream

CONF = 0.3  # the test model's confidences lie around 0.25-0.4 (see deploy_utils)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("detect") / "best.pt")


@pytest.fixture()
def folder(tmp_path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    make_image(d / "a.jpg", 120, 150, seed=0)
    make_image(d / "b.png", 90, 200, seed=1)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return d


def _labels(f: Path) -> np.ndarray:
    return np.loadtxt(f, ndmin=2)


class _Records(logging.Handler):
    """Collects the project logger's messages (its propagation may be off after a CLI's set_logging)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_folder_with_corrupt_file(ckpt, folder, tmp_path):
    from utils.log import LOGGER

    records = _Records()
    LOGGER.addHandler(records)
    try:
        res = detect.run(weights=ckpt, source=folder, img_size=160, conf_thres=CONF, save_txt=True, save_conf=True,
                         project=tmp_path / "runs", name="exp", max_det=20)
    finally:
        LOGGER.removeHandler(records)
    save_dir = res["save_dir"]
    assert save_dir == tmp_path / "runs" / "exp"
    # the corrupt file is named and skipped, the others are processed
    assert res["skipped"] == [str(folder / "corrupt.jpg")]
    assert any("corrupt.jpg" in m and "WARNING" in m for m in records.messages)
    assert res["images"] == 2
    for name in ("a.jpg", "b.png"):
        out = cv2.imread(str(save_dir / name))
        assert out is not None and out.shape[:2] == cv2.imread(str(folder / name)).shape[:2]
    assert not (save_dir / "corrupt.jpg").exists()
    n_total = 0
    for stem in ("a", "b"):
        key = str(folder / f"{stem}.{'jpg' if stem == 'a' else 'png'}")
        n = res["detections"][key]
        f = save_dir / "labels" / f"{stem}.txt"
        if n:
            lb = _labels(f)
            assert lb.shape == (n, 6)  # class cx cy w h conf
            assert set(lb[:, 0].astype(int)) <= set(range(len(NAMES)))
            assert (lb[:, 1:5] >= 0).all() and (lb[:, 1:5] <= 1).all()
            assert (lb[:, 5] > CONF).all() and (lb[:, 5] <= 1).all()
        n_total += n
    assert n_total > 0, "the test model should detect something at this threshold"
    # annotated images differ from the originals where boxes were drawn
    a_in, a_out = cv2.imread(str(folder / "a.jpg")), cv2.imread(str(save_dir / "a.jpg"))
    if res["detections"][str(folder / "a.jpg")]:
        assert np.abs(a_in.astype(int) - a_out.astype(int)).max() > 50
    # a second run increments the folder name
    res2 = detect.run(weights=ckpt, source=folder / "a.jpg", img_size=160, conf_thres=CONF,
                      project=tmp_path / "runs", name="exp", nosave=True)
    assert res2["save_dir"] == tmp_path / "runs" / "exp2" and res2["saved"] == []


def test_video_frames_in_equal_frames_out(ckpt, tmp_path):
    src = make_video(tmp_path / "clip.avi", frames=5)
    n_in = count_frames(src)
    assert n_in == 5
    res = detect.run(weights=ckpt, source=src, img_size=128, conf_thres=CONF, save_txt=True,
                     project=tmp_path / "runs", name="vid")
    out = res["save_dir"] / "clip.mp4"
    assert res["saved"] == [str(out)]
    assert res["frames_written"][str(out)] == n_in
    assert count_frames(out) == n_in
    cap = cv2.VideoCapture(str(out))
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (128, 96)
    cap.release()
    assert len([k for k in res["detections"] if k.startswith(str(src))]) == n_in
    for k, n in res["detections"].items():  # one label file per frame with detections
        frame = int(k.rsplit(":", 1)[1])
        assert (res["save_dir"] / "labels" / f"clip_{frame}.txt").exists() == (n > 0)


def test_onnx_weights_give_the_same_detections(ckpt, tmp_path):
    import export

    export.run(ckpt, img_size=[160], include=["onnx"])
    img = make_image(tmp_path / "sq.jpg", 160, 160, seed=2)  # square: same letterbox for both backends
    kw = dict(source=img, img_size=160, conf_thres=CONF, save_txt=True, save_conf=True, project=tmp_path / "r",
              max_det=20)
    r_pt = detect.run(weights=ckpt, name="pt", **kw)
    r_onnx = detect.run(weights=ckpt.with_suffix(".onnx"), name="onnx", **kw)
    n = r_pt["detections"][str(img)]
    assert n > 0 and r_onnx["detections"][str(img)] == n
    a, b = _labels(r_pt["save_dir"] / "labels" / "sq.txt"), _labels(r_onnx["save_dir"] / "labels" / "sq.txt")
    assert (a[:, 0] == b[:, 0]).all()
    # detect.py rounds boxes to whole pixels: rounding noise may move an edge by one pixel
    assert np.abs(a[:, 1:5] - b[:, 1:5]).max() <= 1 / 160 + 1e-6
    assert np.abs(a[:, 5] - b[:, 5]).max() < 1e-4


def test_list_and_glob_sources(ckpt, folder, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{folder / 'a.jpg'}\n{folder / 'b.png'}\n")
    res = detect.run(weights=ckpt, source=lst, img_size=128, conf_thres=CONF, project=tmp_path / "r", name="l")
    assert sorted(Path(p).name for p in res["detections"]) == ["a.jpg", "b.png"]
    res = detect.run(weights=ckpt, source=str(folder / "*.png"), img_size=128, conf_thres=CONF, nosave=True,
                     project=tmp_path / "r", name="g")
    assert list(res["detections"]) == [str(folder / "b.png")]


def test_stream_source_detection():
    assert is_stream("0") and is_stream("rtsp://example.com/live")
    assert is_stream("HTTP://example.com/a.mjpg")
    assert not is_stream("images/") and not is_stream("a.jpg")


def test_cli_errors_are_reported(ckpt, tmp_path, capsys):
    """Each user error ends in one ``detect.py: error:`` line naming the file, exit 2, no traceback."""
    def cli(*argv: str) -> tuple[int, str]:
        rc = run_cli(detect.main, list(argv), prog="detect.py")
        err = capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if ln.startswith("detect.py: error:")]
        assert len(errors) == 1 and "Traceback" not in err, err
        return rc, errors[0]

    rc, err = cli("--weights", str(tmp_path / "missing.pt"), "--source", str(tmp_path))
    assert rc == 2 and "missing.pt" in err
    rc, err = cli("--weights", str(ckpt), "--source", str(tmp_path / "nothing_here"), "--project", str(tmp_path / "r"))
    assert rc == 2 and "nothing_here" in err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    rc, err = cli("--weights", str(bad), "--source", str(tmp_path))
    assert rc == 2 and "bad.onnx" in err
    for flag, value in (("--img-size", "0"), ("--threads", "0"), ("--conf-thres", "2")):
        rc, err = cli("--weights", str(ckpt), "--source", str(tmp_path), flag, value)
        assert rc == 2 and flag in err, (flag, err)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_stream_branch_on_a_video_file(ckpt, tmp_path, monkeypatch):
    """The webcam/stream code path (LoadStreams, batched frames, per-stream video) on a local file."""
    src = make_video(tmp_path / "cam.avi", frames=4)
    monkeypatch.setattr(detect, "is_stream", lambda s: True)
    res = detect.run(weights=ckpt, source=str(src), img_size=128, conf_thres=CONF, save_txt=True,
                     project=tmp_path / "runs", name="stream")
    assert res["images"] >= 1 and res["skipped"] == []
    out = res["save_dir"] / "cam.mp4"
    assert res["saved"] == [str(out)] and count_frames(out) == res["frames_written"][str(out)] == res["images"]


def test_augmented_inference(ckpt, folder, tmp_path):
    res = detect.run(weights=ckpt, source=folder / "a.jpg", img_size=128, conf_thres=CONF, augment=True,
                     nosave=True, project=tmp_path / "r", name="aug")
    assert res["images"] == 1 and str(folder / "a.jpg") in res["detections"]


def _png_header(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims ``w`` x ``h`` (8-bit RGB); its pixel data is a stub."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        chunk(b"IEND", b"")


@pytest.mark.timeout(300)
def test_hostile_inputs_are_named_and_skipped(ckpt, folder, tmp_path):
    """A fifo named .jpg (must not block), a truncated JPEG, a 20000x20000 PNG header and a missing list
    entry are each reported and skipped; the good images in the same list are processed."""
    import os

    from utils.log import LOGGER

    bad = tmp_path / "bad"
    bad.mkdir()
    os.mkfifo(bad / "pipe.jpg")
    full = (folder / "a.jpg").read_bytes()
    (bad / "cut.jpg").write_bytes(full[: len(full) // 2])
    assert cv2.imread(str(bad / "cut.jpg")) is not None  # OpenCV alone would grey-fill it silently
    (bad / "huge.png").write_bytes(_png_header(20000, 20000))
    lst = tmp_path / "list.txt"
    lst.write_text(f"{folder / 'a.jpg'}\n{tmp_path / 'gone.jpg'}\n{bad}\n{folder / 'b.png'}\n")
    assert not is_stream(str(lst))
    records = _Records()
    LOGGER.addHandler(records)
    try:
        res = detect.run(weights=ckpt, source=lst, img_size=96, conf_thres=CONF, nosave=True,
                         project=tmp_path / "r", name="hostile")
    finally:
        LOGGER.removeHandler(records)
    assert sorted(Path(p).name for p in res["detections"]) == ["a.jpg", "b.png"] and res["images"] == 2
    assert sorted(Path(p).name for p in res["skipped"]) == ["cut.jpg", "gone.jpg", "huge.png", "pipe.jpg"]
    text = "\n".join(records.messages)
    assert "named pipe" in text and "truncated" in text and "gone.jpg does not exist" in text
    assert "huge.png" in text and ("too large" in text or "megapixel" in text)


def test_sources_split_and_read(folder, tmp_path):
    """utils.data.sources directly: per-line list split, stream detection, the pixel limit before decoding."""
    from utils.data.files import ImageReadError
    from utils.data.sources import LoadImages, read_source_image, split_sources

    lst = tmp_path / "mixed.txt"
    lst.write_text(f"{folder / 'a.jpg'}\n\nrtsp://example.com/live\n0\nmissing.png\n")
    files, streams, problems = split_sources(lst)
    assert files == [str(folder / "a.jpg")] and streams == ["rtsp://example.com/live", "0"]
    assert problems == [("missing.png", f"{lst}:5: missing.png does not exist; skipped")]
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(20000, 20000))
    with pytest.raises(ImageReadError, match="huge.png"):
        read_source_image(str(huge))
    assert read_source_image(str(folder / "a.jpg")).shape == (120, 150, 3)
    ds = LoadImages(folder, img_size=64)
    assert [Path(p).name for p, *_ in ds] == ["a.jpg", "b.png"] and list(ds.skipped) == [str(folder / "corrupt.jpg")]


def test_yolov7_flags_ensemble_no_trace_update(ckpt, folder, tmp_path, capsys):
    """Several --weights = one ensemble (same model twice: NMS leaves the single model's boxes);
    --no-trace is accepted; --update strips the optimizer state (fp16 weights: a smaller file)."""
    import shutil

    from models.experimental import attempt_load
    from utils.checkpoint import load_checkpoint

    w = tmp_path / "copy.pt"
    shutil.copy(ckpt, w)
    size0 = w.stat().st_size
    img = folder / "a.jpg"
    common = ["--source", str(img), "--img-size", "128", "--conf-thres", str(CONF), "--save-txt", "--nosave",
              "--project", str(tmp_path / "r")]
    assert detect.main(["--weights", str(ckpt), "--name", "one", *common]) == 0
    assert detect.main(["--weights", str(w), str(ckpt), "--name", "two", "--no-trace", "--update",
                        "--threads", "1", *common]) == 0
    one = np.loadtxt(tmp_path / "r" / "one" / "labels" / "a.txt", ndmin=2)
    two = np.loadtxt(tmp_path / "r" / "two" / "labels" / "a.txt", ndmin=2)
    one, two = one[np.lexsort(one.T[::-1])], two[np.lexsort(two.T[::-1])]  # equal-score rows may swap
    assert len(one) > 0 and one.shape == two.shape and np.abs(one - two).max() < 1e-6
    assert w.stat().st_size < 0.7 * size0 and load_checkpoint(w).get("optimizer") is None
    assert attempt_load(w).nc == len(NAMES)
    with pytest.raises(SystemExit):
        detect.parse_opt(["--help"])
    assert "(default: 0.25)" in capsys.readouterr().out
