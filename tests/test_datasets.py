"""Tests for utils/data/ (through YOLOv7's utils.datasets path): verification messages, label cache, loaders,
inference sources, check CLI.

Every dataset here is generated in tmp_path (small images); the coco128 test skips when
../shared is absent.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from utils import datasets as D
from utils.data import cache as data_cache
from utils.data import files as data_files
from utils.data import labels as data_labels
from utils.data.cache import NoUsableImagesError, is_writable_dir, scan_dataset
from utils.data.dataset import LoadImagesAndLabels, collate_fn
from utils.data.files import img2label_paths
from utils.data.loader import create_dataloader
from utils.data.sources import LoadImages, LoadStreams
from utils.torch_utils import init_seeds

NC = 3




def _img(h=64, w=80, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def _write(root: Path, name: str, label: str | None, img: np.ndarray | None = None, split="train") -> Path:
    """Write images/<split>/<name> and, unless label is None, labels/<split>/<stem>.txt."""
    ip = root / "images" / split / name
    ip.parent.mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(ip), _img() if img is None else img)
    if label is not None:
        (root / "labels" / split / (ip.stem + ".txt")).write_text(label)
    return ip


def _good(root: Path, n=4, split="train", size=(64, 80)):
    for i in range(n):
        _write(root, f"good{i}.jpg", f"{i % NC} 0.5 0.5 0.4 0.3\n1 0.25 0.25 0.2 0.2\n",
               _img(*size, seed=i), split)


# --------------------------------------------------------------------------- paths
def test_img2label_paths():
    p = os.path.join(os.sep, "data", "images", "x", "images", "train", "a.b.jpg")
    assert img2label_paths([p]) == [os.path.join(os.sep, "data", "images", "x", "labels", "train", "a.b.txt")]


# --------------------------------------------------------------------------- verification
@pytest.fixture
def messy(tmp_path) -> Path:
    """A split with one file for each problem the verifier knows."""
    root = tmp_path / "messy"
    _good(root, n=2)
    _write(root, "png.png", "0 0.5 0.5 0.5 0.5\n")
    _write(root, "gray.jpg", "1 0.5 0.5 0.5 0.5\n", img=cv2.cvtColor(_img(), cv2.COLOR_BGR2GRAY))
    # EXIF-rotated: stored 80 wide x 64 high, orientation 6 (display rotated 90 degrees -> 64 x 80)
    ex = Image.new("RGB", (80, 64)).getexif()
    ex[0x0112] = 6
    (root / "images" / "train" / "exif.jpg").parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_img()[..., ::-1]).save(root / "images" / "train" / "exif.jpg", exif=ex.tobytes())
    (root / "labels" / "train" / "exif.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    _write(root, "empty.jpg", "")
    _write(root, "nolabel.jpg", None)
    _write(root, "cols4.jpg", "0 0.5 0.5 0.2\n")
    _write(root, "nan.jpg", "0 0.5 0.5 0.2 0.2\n1 nan 0.5 0.2 0.2\n")
    _write(root, "cls.jpg", "7 0.5 0.5 0.2 0.2\n")
    _write(root, "outside.jpg", "0 0.9 0.5 0.6 0.2\n")
    _write(root, "nowidth.jpg", "0 0.5 0.5 0 0.2\n")
    _write(root, "dup.jpg", "0 0.5 0.5 0.2 0.2\n\n1 0.3 0.3 0.1 0.1\n0 0.5 0.5 0.2 0.2\n")
    _write(root, "clip.jpg", "0 0.995 0.5 0.02 0.2\n")
    _write(root, "poly.jpg", "0 0.1 0.1 0.5 0.1 0.5 0.5\n")
    _write(root, "bom.jpg", "\ufeff1 0.5 0.5 0.2 0.2\n")
    ip = _write(root, "trunc.jpg", "0 0.5 0.5 0.2 0.2\n")
    data = ip.read_bytes()
    ip.write_bytes(data[: len(data) // 2])
    _write(root, "tiny.jpg", "0 0.5 0.5 0.2 0.2\n", img=_img(8, 40))
    (root / "images" / "train" / "text.jpg").write_text("not an image")
    (root / "labels" / "train" / "text.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "images" / "train" / "anim.gif").write_bytes(b"GIF89a")
    Image.new("RGB", (32, 32)).save(root / "images" / "train" / "gif.jpg", format="GIF")  # GIF named .jpg
    (root / "labels" / "train" / "gif.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return root


def test_messy_split_report(messy):
    res = scan_dataset(messy / "images" / "train", nc=NC, prefix="train: ")
    rep = res.report
    lb = lambda stem: str((messy / "labels" / "train" / f"{stem}.txt").resolve())  # noqa: E731
    im = lambda name: str((messy / "images" / "train" / name).resolve())  # noqa: E731
    corrupt = "\n".join(rep.corrupt_msgs)
    assert f"{lb('cols4')}:1: expected 5 columns" in corrupt
    assert f"{lb('nan')}:2: non-finite value" in corrupt
    assert f"{lb('cls')}:1: class 7 out of range [0, 3)" in corrupt
    assert f"{lb('outside')}:1: box outside the image" in corrupt
    assert f"{lb('nowidth')}:1: width and height must be positive" in corrupt
    assert f"{lb('poly')}:1: expected 5 columns (class cx cy w h), got 7 (looks like a polygon" in corrupt
    assert f"{im('trunc.jpg')}: truncated JPEG" in corrupt
    assert f"{im('tiny.jpg')}: image size 40x8 is below 10 px" in corrupt
    assert f"{im('text.jpg')}: not an image" in corrupt
    assert f"{im('gif.jpg')}: unsupported image format 'gif'" in corrupt
    assert rep.skipped_msgs == [f"{messy / 'images' / 'train' / 'anim.gif'}: not a supported image format '.gif' "
                                f"(supported: {', '.join(D.IMG_FORMATS)})"]
    fixed = "\n".join(rep.fixed_msgs)
    assert f"{lb('dup')}:4: duplicate of line 1: removed" in fixed
    assert f"{lb('clip')}:1: box overshoots the image" in fixed
    assert rep.missing_msgs == [f"{im('nolabel.jpg')}: no label file {lb('nolabel')} (used as background)"]
    # good0, good1, png, gray, exif, dup, clip, bom found; empty; nolabel; 10 corrupt; the .gif file is skipped
    assert (rep.total, rep.found, rep.missing, rep.empty, rep.corrupt, rep.fixed) == (20, 8, 1, 1, 10, 2)
    assert rep.usable == 10 == len(res.img_files)
    assert "20 images: 8 found, 1 missing, 1 empty, 10 corrupt, 2 fixed, 1 other files skipped" in rep.summary()

    by = dict(zip([Path(f).name for f in res.img_files], range(len(res.img_files))))
    np.testing.assert_allclose(res.labels[by["dup.jpg"]], [[0, 0.5, 0.5, 0.2, 0.2], [1, 0.3, 0.3, 0.1, 0.1]])
    np.testing.assert_allclose(res.labels[by["clip.jpg"]], [[0, 0.9925, 0.5, 0.015, 0.2]], atol=1e-6)
    np.testing.assert_allclose(res.labels[by["bom.jpg"]], [[1, 0.5, 0.5, 0.2, 0.2]])
    assert tuple(res.shapes[by["exif.jpg"]]) == (64, 80)  # (w, h) after EXIF rotation
    assert res.labels[by["empty.jpg"]].shape == (0, 5) and res.labels[by["nolabel.jpg"]].shape == (0, 5)


def test_dataset_loads_png_gray_exif(messy):
    ds = LoadImagesAndLabels(messy / "images" / "train", img_size=96, batch_size=4, nc=NC)
    names = [Path(f).name for f in ds.img_files]
    for name in ("png.png", "gray.jpg", "exif.jpg"):
        img, labels, path, shapes = ds[names.index(name)]
        assert img.shape == (3, 96, 96) and img.dtype == torch.uint8
        assert labels.shape[1] == 6 and path.endswith(name)
    im, hw0, hw = ds.load_image(names.index("exif.jpg"))
    assert hw0 == (80, 64) and im.shape == (96, 77, 3)  # rotated: taller than wide


def test_no_usable_images_is_an_error(tmp_path):
    root = tmp_path / "bad"
    _write(root, "a.jpg", "5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(NoUsableImagesError, match="no usable images") as e:
        LoadImagesAndLabels(root / "images" / "train", img_size=64, nc=NC)
    assert e.value.report.corrupt == 1
    with pytest.raises(NoUsableImagesError, match="no images found"):
        (tmp_path / "none").mkdir()
        scan_dataset(tmp_path / "none")


def test_txt_list_split(tmp_path):
    root = tmp_path / "ds"
    _good(root, n=3)
    lst = root / "train.txt"
    lst.write_text("./images/train/good0.jpg\nimages/train/good1.jpg\n"
                   f"{(root / 'images/train/good2.jpg').resolve()}\nimages/train/gone.jpg\n")
    res = scan_dataset(lst, nc=NC)
    assert len(res.img_files) == 3
    assert res.report.corrupt_msgs == [f"{lst}:4: listed image does not exist (images/train/gone.jpg)"]


# --------------------------------------------------------------------------- reading images safely
def test_check_image_size_reads_only_the_header(tmp_path, monkeypatch):
    f = tmp_path / "big.png"
    Image.new("L", (400, 300)).save(f)
    assert D.check_image_size(f) == (400, 300)
    with pytest.raises(D.ImageReadError, match=r"big.png: refused: 400x300 .* limit"):
        D.check_image_size(f, max_pixels=100_000)
    monkeypatch.setattr(data_files, "MAX_IMAGE_PIXELS", 1)  # the default is bound at definition time
    assert D.check_image_size(f) == (400, 300)
    (tmp_path / "t.jpg").write_text("text")
    with pytest.raises(D.ImageReadError, match="t.jpg: not an image"):
        D.check_image_size(tmp_path / "t.jpg")
    with pytest.raises(D.ImageReadError, match="does not exist"):
        D.read_image(tmp_path / "none.jpg")
    with pytest.raises(D.ImageReadError, match="not a regular file"):
        D.read_image(tmp_path)


def test_pixel_limit_applies_to_the_scan(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    _good(root, n=2)
    big = _write(root, "big.png", "0 0.5 0.5 0.2 0.2\n", img=_img(200, 300))
    orig = D.check_image_size
    monkeypatch.setattr(data_labels, "check_image_size", lambda p, max_pixels=50_000: orig(p, max_pixels))
    rep = scan_dataset(root / "images" / "train", nc=NC, use_cache=False).report
    assert rep.corrupt == 1 and f"{big.resolve()}: refused: 300x200" in rep.corrupt_msgs[0]


def test_read_image_gives_8bit_bgr(tmp_path):
    Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)).save(tmp_path / "u16.png")
    Image.fromarray(_img(30, 40), "RGB").convert("RGBA").save(tmp_path / "rgba.png")
    for name in ("u16.png", "rgba.png"):
        im = D.read_image(tmp_path / name)
        assert im.dtype == np.uint8 and im.shape == (30, 40, 3)
    Image.fromarray(np.random.default_rng(0).random((30, 40), dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(D.ImageReadError, match="f.tif: OpenCV cannot decode"):
        D.read_image(tmp_path / "f.tif")


def test_folder_walk_dedupes_links_and_skips_special_files(tmp_path):
    root = tmp_path / "ds"
    _good(root, n=2)
    train = root / "images" / "train"
    os.link(train / "good0.jpg", train / "hard.jpg")  # the same file under a second name: counted once
    (train / "soft.jpg").symlink_to(train / "good1.jpg")
    (train / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    (train / "sub").mkdir()
    (train / "sub" / "deep.jpg").write_bytes((train / "good0.jpg").read_bytes())  # a copy: a separate image
    (train / ".hidden").mkdir()
    (train / ".hidden" / "x.jpg").write_bytes(b"")
    imgs, problems, skipped = D.list_image_files(train)
    assert sorted(Path(f).name for f in imgs) == ["deep.jpg", "good0.jpg", "good1.jpg"]
    assert problems == [] and skipped == [f"{train / 'broken.jpg'}: does not exist (broken link)"]
    # the same folder given twice (as a yaml list can) is listed once
    assert len(D.list_image_files([train, train / "sub"])[0]) == 3


def test_txt_list_entries_must_be_regular_files(tmp_path):
    root = tmp_path / "ds"
    _good(root, n=1)
    os.mkfifo(root / "images" / "train" / "pipe.jpg")
    lst = tmp_path / "list.txt"
    lst.write_text(f"{root}/images/train/good0.jpg\n{root}/images/train/pipe.jpg\n{root}/images/train/good0.jpg\n")
    imgs, problems, _ = D.list_image_files(lst)
    assert len(imgs) == 2  # a list may repeat an image on purpose (oversampling)
    assert problems == [f"{lst}:2: listed image is not a regular file (a named pipe) ({root}/images/train/pipe.jpg)"]
    # a split that is itself a single image file, or a pipe
    assert D.list_image_files(root / "images" / "train" / "good0.jpg")[0] == imgs[:1]
    with pytest.raises(FileNotFoundError, match="not an image folder or a .txt list: it is not a regular file"):
        D.list_image_files(root / "images" / "train" / "pipe.jpg")


def test_label_that_is_a_pipe_or_huge_is_corrupt(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    _good(root, n=3)
    _write(root, "bg.jpg", "")  # an empty label: under any limit, keeps the split usable
    lb = root / "labels" / "train"
    (lb / "good0.txt").unlink()
    os.mkfifo(lb / "good0.txt")  # opening it would block the scan
    monkeypatch.setattr(data_labels, "MAX_LABEL_BYTES", 20)
    rep = scan_dataset(root / "images" / "train", nc=NC, use_cache=False).report
    msgs = "\n".join(rep.corrupt_msgs)
    assert f"{(lb / 'good0.txt').resolve()}: label file is not a regular file (a named pipe)" in msgs
    assert "bytes is too large for a label file (limit 20)" in msgs  # good1/good2: 2 lines, > 20 bytes
    assert rep.corrupt == 3


def test_disk_image_cache_is_atomic_and_self_healing(tmp_path):
    root = tmp_path / "ds"
    _good(root, n=2)
    ds = LoadImagesAndLabels(root / "images" / "train", img_size=64, cache_images="disk", nc=NC)
    npy = ds.npy_files[0]
    assert npy.is_file() and not [p for p in npy.parent.iterdir() if p.name.startswith(".")]
    ref = ds.load_image(0)[0]
    npy.write_bytes(b"\x93NUMPY garbage")  # damaged by hand: the image itself is read instead
    ds2 = LoadImagesAndLabels(root / "images" / "train", img_size=64, nc=NC)
    ds2.npy_files = ds.npy_files
    np.testing.assert_array_equal(ds2.load_image(0)[0], ref)


# --------------------------------------------------------------------------- cache
def test_cache_reused_and_rebuilt(tmp_path):
    root = tmp_path / "ds"
    _good(root, n=3)
    src = root / "images" / "train"
    r1 = scan_dataset(src, nc=NC).report
    cache = root / "labels" / "train.cache"
    assert not r1.from_cache and r1.cache_file == str(cache) and cache.is_file()
    r2 = scan_dataset(src, nc=NC)
    assert r2.report.from_cache and r2.report.cache_file == str(cache)
    np.testing.assert_allclose(r2.labels[0], [[0, 0.5, 0.5, 0.4, 0.3], [1, 0.25, 0.25, 0.2, 0.2]])
    # edit a label: the cache must be rebuilt and show the edit
    (root / "labels" / "train" / "good0.txt").write_text("2 0.5 0.5 0.1 0.1\n")
    r3 = scan_dataset(src, nc=NC)
    assert not r3.report.from_cache
    np.testing.assert_allclose(r3.labels[0], [[2, 0.5, 0.5, 0.1, 0.1]])
    assert scan_dataset(src, nc=NC).report.from_cache
    # a different nc changes what is valid: rebuilt too
    r5 = scan_dataset(src, nc=2)
    assert not r5.report.from_cache and r5.report.corrupt == 2  # good0 and good2 have class 2
    # a new image invalidates it as well
    _write(root, "new.jpg", "0 0.5 0.5 0.1 0.1\n")
    r6 = scan_dataset(src, nc=NC)
    assert not r6.report.from_cache and len(r6.img_files) == 4
    # a corrupted cache file is ignored and rewritten
    cache.write_bytes(b"garbage")
    r7 = scan_dataset(src, nc=NC)
    assert not r7.report.from_cache and scan_dataset(src, nc=NC).report.from_cache


def test_cache_of_an_older_checker_is_rebuilt(tmp_path):
    """Version-1 caches trusted PIL alone (a float32 TIFF was 'found'): they are not reused."""
    root = tmp_path / "ds"
    _good(root, n=2)
    src = root / "images" / "train"
    cache = Path(scan_dataset(src, nc=NC).report.cache_file)
    old = torch.load(cache, weights_only=True)
    assert old["version"] == data_cache.CACHE_VERSION >= 2
    old["version"] = 1
    torch.save(old, cache)
    assert not scan_dataset(src, nc=NC).report.from_cache


def _snapshot(root: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_read_only_dataset(tmp_path, _cache_dir):
    root = tmp_path / "ro"
    _good(root, n=3)
    dirs = [root, root / "images", root / "images" / "train", root / "labels", root / "labels" / "train"]
    before = _snapshot(root)
    for d in dirs:
        d.chmod(0o555)
    try:
        assert not is_writable_dir(root / "labels")  # honoured even when running as root
        r1 = scan_dataset(root / "images" / "train", nc=NC).report
        assert r1.cache_file and Path(r1.cache_file).parent == _cache_dir and not r1.from_cache
        assert scan_dataset(root / "images" / "train", nc=NC).report.from_cache
        ds = LoadImagesAndLabels(root / "images" / "train", img_size=64, cache_images="disk", nc=NC)
        assert all(f.parent == _cache_dir and f.exists() for f in ds.npy_files)
        np.testing.assert_array_equal(ds.load_image(0)[0], cv2.resize(cv2.imread(ds.img_files[0]), (64, 51),
                                                                       interpolation=cv2.INTER_AREA))
        assert _snapshot(root) == before  # nothing written inside the dataset
    finally:
        for d in dirs:
            d.chmod(0o755)


def test_cache_images_ram_matches_disk_reads(tmp_path):
    root = tmp_path / "ds"
    _good(root, n=3, size=(60, 100))
    a = LoadImagesAndLabels(root / "images" / "train", img_size=64, nc=NC)
    b = LoadImagesAndLabels(root / "images" / "train", img_size=64, cache_images="ram", nc=NC)
    assert all(x is not None for x in b.imgs)
    for i in range(3):
        ia, ib = a[i], b[i]
        assert torch.equal(ia[0], ib[0]) and torch.equal(ia[1], ib[1]) and ia[3] == ib[3]
    with pytest.raises(ValueError, match="cache_images"):
        LoadImagesAndLabels(root / "images" / "train", img_size=64, cache_images="gpu", nc=NC)


# --------------------------------------------------------------------------- items and batches
def test_letterboxed_item_labels_and_shapes(tmp_path):
    root = tmp_path / "ds"
    _write(root, "a.jpg", "1 0.5 0.25 0.5 0.5\n", _img(50, 100))
    ds = LoadImagesAndLabels(root / "images" / "train", img_size=64, nc=NC)
    img, labels, path, shapes = ds[0]
    assert img.shape == (3, 64, 64)
    (h0, w0), ((rh, rw), (padw, padh)) = shapes
    assert (h0, w0) == (50, 100) and (rh, rw) == (32 / 50, 64 / 100) and (padw, padh) == (0.0, 16.0)
    # box: x 25..75 of 100 -> 16..48 of 64; y 0..25 of 50 -> 16..32 of 64 (after the 16 px pad)
    torch.testing.assert_close(labels, torch.tensor([[0, 1, 0.5, 0.375, 0.5, 0.25]]))
    # RGB channel order: pixel (row 16 + 1, col 0) equals the source BGR pixel reversed (approximately)
    src = cv2.resize(cv2.imread(path), (64, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(img[:, 16:48].permute(1, 2, 0).numpy(), src[..., ::-1])


def test_rect_batches(tmp_path):
    root = tmp_path / "ds"
    for i, (h, w) in enumerate([(40, 100), (100, 40), (60, 100), (100, 100), (30, 100)]):
        _write(root, f"{i}.jpg", "0 0.5 0.5 0.5 0.5\n", _img(h, w, seed=i))
    loader, ds = create_dataloader(root / "images" / "train", 64, 2, 32, rect=True, workers=0, pad=0.5, nc=NC)
    assert (ds.batch_shapes % 32 == 0).all()
    ars = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ars) >= 0).all()  # sorted by aspect ratio
    seen = 0
    for imgs, _targets, paths, shapes in loader:
        assert imgs.shape[2] % 32 == 0 and imgs.shape[3] % 32 == 0
        assert all(s is not None for s in shapes)
        seen += len(paths)
    assert seen == 5


def test_collate_fn():
    a = (torch.zeros(3, 8, 8, dtype=torch.uint8), torch.tensor([[0, 1, .5, .5, .1, .1]]), "a", None)
    b = (torch.ones(3, 8, 8, dtype=torch.uint8), torch.tensor([[0, 2, .5, .5, .2, .2], [0, 0, .1, .1, .1, .1]]),
         "b", None)
    imgs, t, paths, shapes = collate_fn([a, b])
    assert imgs.shape == (2, 3, 8, 8) and paths == ("a", "b") and shapes == (None, None)
    assert t[:, 0].tolist() == [0, 1, 1] and t[:, 1].tolist() == [1, 2, 0]


def _hyp(**kw):
    h = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "hyp.scratch.tiny.yaml").read_text())
    h.update(paste_in=0.0)
    h.update(kw)
    return h


def test_seeded_order_is_reproducible(tmp_path):
    root = tmp_path / "ds"
    _good(root, n=6)

    def run(seed, workers):
        init_seeds(seed)  # with workers=0 augmentation draws from the process RNGs (as YOLOv7)
        loader, _ = create_dataloader(root / "images" / "train", 64, 2, 32, hyp=_hyp(), augment=True,
                                      shuffle=True, seed=seed, workers=workers, nc=NC)
        out = []
        for _epoch in range(2):
            for imgs, t, paths, _ in loader:
                out.append((paths, imgs.float().mean().item(), t.sum().item()))
        return out, loader

    a, la = run(0, 0)
    b, _ = run(0, 0)
    assert a == b
    c, lc = run(0, 2)
    d, _ = run(0, 2)
    assert c == d and lc.persistent_workers and lc.num_workers == 2 and not la.persistent_workers
    e, _ = run(1, 0)
    assert [x[0] for x in e] != [x[0] for x in a]  # a different seed, a different order


def test_distributed_sampler(tmp_path):
    import torch.distributed as dist
    root = tmp_path / "ds"
    _good(root, n=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        loader, ds = create_dataloader(root / "images" / "train", 64, 2, 32, rank=0, workers=0, shuffle=True,
                                       nc=NC)
        assert isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler)
        assert sum(len(b[2]) for b in loader) == 4
    finally:
        dist.destroy_process_group()


def test_single_cls(tmp_path):
    root = tmp_path / "ds"
    _good(root, n=3)
    ds = LoadImagesAndLabels(root / "images" / "train", img_size=64, single_cls=True, nc=NC)
    assert all((x[:, 0] == 0).all() for x in ds.labels)


# --------------------------------------------------------------------------- inference sources
def _video(path: Path, n=5, size=(48, 64)) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size[1], size[0]))
    assert vw.isOpened()
    for i in range(n):
        vw.write(np.full((size[0], size[1], 3), 20 * i, np.uint8))
    vw.release()
    return path


def test_load_images_and_video(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), _img(50, 100))
    cv2.imwrite(str(src / "b.png"), _img(100, 50))
    _video(src / "c.avi", n=4)
    (src / "notes.txt").write_text("x")
    it = LoadImages(src, img_size=64, stride=32)
    assert it.nf == 3 and len(it) == 3
    items = list(it)
    assert len(items) == 2 + 4
    path, img, img0, cap, info = items[0]
    assert path.endswith("a.jpg") and img0.shape == (50, 100, 3) and cap is None
    assert info.startswith("image 1/3 ")
    # auto=True: the minimum stride-multiple rectangle; 100 x 50 -> 64 x 32, no padding needed
    np.testing.assert_array_equal(img, cv2.resize(img0, (64, 32))[..., ::-1].transpose(2, 0, 1))
    assert items[1][1].shape == (3, 64, 32)
    assert LoadImages(src / "a.jpg", img_size=64, auto=False).__iter__().__next__()[1].shape == (3, 64, 64)
    vids = items[2:]
    assert all(v[0].endswith("c.avi") and v[3] is not None for v in vids)
    assert vids[-1][4].startswith("video 3/3 (4/4)") and it.mode == "video"
    assert [Path(p).name for p, *_ in LoadImages(str(src / "*.jpg"), img_size=64)] == ["a.jpg"]
    with pytest.raises(FileNotFoundError):
        LoadImages(tmp_path / "missing")


def test_load_streams_from_video_file(tmp_path):
    v = _video(tmp_path / "s.avi", n=6)
    st = LoadStreams(str(v), img_size=64, stride=32)
    n = 0
    for sources, img, img0, _cap, _info in st:
        assert sources == [str(v)] and img.shape == (1, 3, 64, 64) and img0[0].shape == (48, 64, 3)
        n += 1
        if n > 50:
            break
    st.close()
    assert n >= 1
    with pytest.raises(ConnectionError):
        LoadStreams(str(tmp_path / "nope.avi"))


# --------------------------------------------------------------------------- check CLI
def test_check_cli_exit_codes(tmp_path, capsys):
    root = tmp_path / "ds"
    _good(root, n=2, split="train")
    _good(root, n=1, split="val")
    _write(root, "nolabel.jpg", None, split="val")
    _write(root, "bad.jpg", "0 0.5 0.5\n", split="val")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "names": ["a", "b", "c"]}))
    assert D.main(["--data", str(good)]) == 0
    out = capsys.readouterr().out
    bad_lb = (root / "labels" / "val" / "bad.txt").resolve()
    assert "val: 3 images: 1 found, 1 missing, 0 empty, 1 corrupt, 0 fixed" in out
    assert f"corrupt: {bad_lb}:1: expected 5 columns (class cx cy w h), got 3" in out
    assert "missing label: " in out and "nolabel.jpg" in out and out.rstrip().endswith("OK")

    # a split whose only image is unusable -> exit 1
    r2 = tmp_path / "ds2"
    _good(r2, n=1, split="train")
    _write(r2, "bad.jpg", "9 0.5 0.5 0.1 0.1\n", split="val")
    y2 = tmp_path / "bad.yaml"
    y2.write_text(yaml.safe_dump({"path": str(r2), "train": "images/train", "val": "images/val", "nc": 3}))
    assert D.main(["--data", str(y2)]) == 1
    out = capsys.readouterr().out
    assert "class 9 out of range [0, 3)" in out and "FAILED" in out

    # a missing split folder -> exit 1 with a message naming the yaml
    y3 = tmp_path / "missing.yaml"
    y3.write_text(yaml.safe_dump({"path": str(r2), "train": "images/train", "val": "images/nope", "nc": 3}))
    assert D.main(["--data", str(y3)]) == 1
    assert f"ERROR: {y3.resolve()}: 'val' split not found" in capsys.readouterr().out


# --------------------------------------------------------------------------- coco128 (skips when absent)
def test_coco128_smoke(coco128_dir):
    res = scan_dataset(coco128_dir / "images" / "val2017", nc=80, prefix="val: ")
    assert res.report.total == 128 and res.report.usable >= 120 and res.report.corrupt == 0
    loader, ds = create_dataloader(coco128_dir / "images" / "train2017", 256, 4, 32, hyp=_hyp(), augment=True,
                                   workers=0, shuffle=True, nc=80)
    imgs, targets, paths, shapes = next(iter(loader))
    assert imgs.shape == (4, 3, 256, 256) and targets.shape[1] == 6 and len(targets)
    assert (targets[:, 2:] >= 0).all() and (targets[:, 2:] <= 1).all() and (targets[:, 4:] > 0).all()
    assert all(Path(p).is_relative_to(coco128_dir.resolve()) for p in paths)


def test_check_cli_as_module(tmp_path):
    """The documented command line, in a fresh interpreter."""
    import subprocess
    import sys
    root = tmp_path / "ds"
    _good(root, n=1, split="train")
    _good(root, n=1, split="val")
    y = tmp_path / "d.yaml"
    y.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "nc": 3}))
    env = dict(os.environ, MOYOLO_CACHE_DIR=str(tmp_path / "c"))
    (root / "labels" / "val" / "good0.txt").write_text("0 0.5 0.5 0.2\n")  # the only val image: unusable
    r = subprocess.run([sys.executable, "-m", "utils.datasets", "--data", str(y), "--img-size", "320"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "train: 1 images: 1 found, 0 missing, 0 empty, 0 corrupt, 0 fixed" in r.stdout
    assert "good0.txt:1: expected 5 columns" in r.stdout and "FAILED" in r.stdout
