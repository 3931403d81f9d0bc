"""VOC / COCO -> YOLO converters on tiny generated datasets, with exact expected labels."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from utils.data.convert import convert_coco, convert_voc, main, split_names


def _img(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), 127, np.uint8)
    cv2.rectangle(img, (5, 5), (w // 2, h // 2), (0, 0, 255), -1)
    assert cv2.imwrite(str(path), img)


def _voc_xml(fname: str, w: int, h: int, objs: list[tuple]) -> str:
    """objs: (name, difficult, xmin, ymin, xmax, ymax)."""
    o = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>"
        for n, d, a, b, c, e in objs)
    return (f"<annotation><folder>VOC</folder><filename>{fname}</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{o}</annotation>")


@pytest.fixture
def voc(tmp_path):
    xd, idir = tmp_path / "Annotations", tmp_path / "JPEGImages"
    xd.mkdir()
    _img(idir / "a.jpg", 100, 80)
    _img(idir / "b.png", 64, 48)
    _img(idir / "e.jpg", 100, 80)
    _img(idir / "f.jpg", 50, 50)
    (xd / "a.xml").write_text(_voc_xml("a.jpg", 100, 80, [("dog", 0, 11, 21, 51, 61), ("cat", 1, 2, 2, 20, 20)]))
    (xd / "b.xml").write_text(_voc_xml("b.png", 64, 48, [
        ("cat", 0, 33, 25, 100, 49),   # overshoots -> clipped to the image
        ("bird", 0, 1, 1, 10, 10),     # unknown when --names cat dog
        ("dog", 0, 10, 10, 10, 20),    # zero width -> degenerate
    ]))
    (xd / "c.xml").write_text(_voc_xml("c.jpg", 100, 80, [("dog", 0, 1, 1, 5, 5)]))  # image missing
    (xd / "d.xml").write_text("<annotation><filename>a.jpg</filename")  # broken xml
    (xd / "e.xml").write_text(_voc_xml("e.jpg", 200, 200, [("cat", 0, 1, 1, 101, 81)]))  # wrong size recorded
    (xd / "f.xml").write_text(_voc_xml("f.jpg", 50, 50, []))  # background image
    return xd, idir


def _labels(out: Path) -> dict[str, str]:
    """{image name: label text} over both splits, checking each image has its label beside it."""
    res = {}
    for s in ("train", "val"):
        imgs = sorted(p.name for p in (out / "images" / s).iterdir())
        labs = sorted(p.name for p in (out / "labels" / s).iterdir())
        assert [Path(i).stem for i in imgs] == [Path(lb).stem for lb in labs]
        for i in imgs:
            res[i] = (out / "labels" / s / (Path(i).stem + ".txt")).read_text()
    return res


def test_voc_exact_labels_and_report(voc, tmp_path):
    xd, idir = voc
    out = tmp_path / "out"
    r = convert_voc(xd, idir, out, names=["cat", "dog"], val=0.25, seed=0)
    assert r.names == ["cat", "dog"]
    assert _labels(out) == {
        "a.jpg": "1 0.300000 0.500000 0.400000 0.500000\n",          # corners 10,20,50,60 after -1 shift
        "b.png": "0 0.750000 0.750000 0.500000 0.500000\n",          # 32,24,64,48 after clipping
        "e.jpg": "0 0.500000 0.500000 1.000000 1.000000\n",          # normalised by the real 100x80
        "f.jpg": "",
    }
    assert r.images == {"train": 3, "val": 1} and sum(r.objects.values()) == 3
    reasons = {(Path(i.where.split(":")[0]).name, i.reason.split(" (")[0].split(" '")[0], i.kind) for i in r.issues}
    assert reasons == {
        ("a.xml", "difficult", "skipped"),
        ("b.xml", "unknown class", "skipped"),
        ("b.xml", "degenerate box", "skipped"),
        ("b.xml", "clipped box [32.0, 24.0, 99.0, 48.0] to the 64x48 image", "fixed"),
        ("c.xml", "missing image", "skipped"),
        ("d.xml", "unreadable xml", "skipped"),
        ("e.xml", "size 200x200 in the annotation differs from the image file's 100x80; normalising by the "
                  "image file's", "fixed"),
    }
    report = (out / "report.txt").read_text()
    assert report.count("\n") == len(r.issues) == 7 and "b.xml:object 1: skipped: unknown class 'bird'" in report
    cfg = yaml.safe_load((out / "data.yaml").read_text())
    assert cfg == {"train": "images/train", "val": "images/val", "nc": 2, "names": ["cat", "dog"]}
    # images are hard links of the originals (same filesystem)
    a = next(out.glob("images/*/a.jpg"))
    assert a.stat().st_ino == (idir / "a.jpg").stat().st_ino


def test_voc_default_names_sorted_keep_difficult_copy(voc, tmp_path):
    xd, idir = voc
    out = tmp_path / "out2"
    r = convert_voc(xd, idir, out, val=0.0, keep_difficult=True, copy=True)
    assert r.names == ["bird", "cat", "dog"]
    labels = _labels(out)
    assert labels["a.jpg"] == ("2 0.300000 0.500000 0.400000 0.500000\n"
                               "1 0.100000 0.125000 0.180000 0.225000\n")
    assert labels["b.png"] == "1 0.750000 0.750000 0.500000 0.500000\n0 0.070312 0.093750 0.140625 0.187500\n"
    assert r.images == {"train": 4, "val": 0}
    assert yaml.safe_load((out / "data.yaml").read_text())["val"] == "images/train"
    assert not any(i.reason.startswith("difficult") for i in r.issues)
    a = out / "images" / "train" / "a.jpg"
    assert a.read_bytes() == (idir / "a.jpg").read_bytes()
    assert a.stat().st_ino != (idir / "a.jpg").stat().st_ino


@pytest.fixture
def coco(tmp_path):
    idir = tmp_path / "imgs"
    _img(idir / "x.jpg", 100, 80)
    _img(idir / "sub" / "y.png", 64, 48)
    _img(idir / "w.jpg", 40, 30)
    _img(idir / "other" / "x.jpg", 20, 20)  # same base name as x.jpg -> renamed on output
    data = {
        "images": [
            {"id": 1, "file_name": "x.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "sub/y.png", "width": 64, "height": 48},
            {"id": 3, "file_name": "z.jpg", "width": 10, "height": 10},
            {"id": 4, "file_name": "w.jpg", "width": 40, "height": 30},
            {"id": 5, "file_name": "other/x.jpg", "width": 20, "height": 20},
        ],
        "categories": [{"id": 5, "name": "person"}, {"id": 2, "name": "car"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 5, "bbox": [10, 20, 40, 40], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "iscrowd": 1},
            {"id": 12, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 2, "bbox": [48, 40, 30, 20], "iscrowd": 0},
            {"id": 14, "image_id": 2, "category_id": 2, "bbox": [5, 5, 0, 10], "iscrowd": 0},
            {"id": 15, "image_id": 3, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 16, "image_id": 77, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 17, "image_id": 5, "category_id": 5, "bbox": [0, 0, 20, 10]},
        ],
    }
    js = tmp_path / "instances.json"
    js.write_text(json.dumps(data))
    return js, idir


def test_coco_exact_labels_and_report(coco, tmp_path):
    js, idir = coco
    out = tmp_path / "out"
    r = convert_coco(js, idir, out, val=0.2, seed=1)
    assert r.names == ["car", "person"]  # categories sorted by id: 2 -> 0, 5 -> 1
    assert _labels(out) == {
        "x.jpg": "1 0.300000 0.500000 0.400000 0.500000\n",
        "y.png": "0 0.875000 0.916667 0.250000 0.166667\n",      # 48,40,64,48 after clipping
        "w.jpg": "",
        "other_x.jpg": "1 0.500000 0.250000 1.000000 0.500000\n",
    }
    assert r.images["train"] + r.images["val"] == 4 and r.images["val"] == 1
    got = sorted((i.where.split("annotation id ")[-1].split(" ")[0] if "annotation id" in i.where else i.where,
                  i.reason.split(" (")[0].split(" '")[0].split(" [")[0], i.kind) for i in r.issues)
    assert got == sorted([
        ("11", "crowd", "skipped"),
        ("12", "unknown category id 99", "skipped"),
        ("13", "clipped box", "fixed"),
        ("14", "degenerate box", "skipped"),
        (f"{js}:image id 3 (z.jpg)", "missing image", "skipped"),
        ("16", "unknown image id 77", "skipped"),
    ])
    missing = next(i for i in r.issues if "missing image" in i.reason)
    assert "its 1 annotations" in missing.reason
    cfg = yaml.safe_load((out / "data.yaml").read_text())
    assert cfg["names"] == ["car", "person"] and cfg["nc"] == 2 and cfg["val"] == "images/val"
    assert cfg["category_ids"] == [2, 5]


def test_written_yaml_passes_check_dataset(coco, voc, tmp_path):
    """The data.yaml a converter writes is accepted as-is by the dataset loader's check."""
    from utils.data.config import check_dataset
    js, idir = coco
    convert_coco(js, idir, tmp_path / "c")
    d = check_dataset(tmp_path / "c" / "data.yaml")
    assert Path(d["train"]) == (tmp_path / "c" / "images" / "train").resolve()
    assert Path(d["val"]) == (tmp_path / "c" / "images" / "val").resolve()
    assert d["names"] == ["car", "person"] and d["category_ids"] == [2, 5]
    xd, vidir = voc
    convert_voc(xd, vidir, tmp_path / "v", val=0.0)
    d = check_dataset(tmp_path / "v" / "data.yaml")
    assert Path(d["val"]) == (tmp_path / "v" / "images" / "train").resolve() and d["nc"] == 3


def test_coco_keep_crowd_and_overwrite(coco, tmp_path):
    js, idir = coco
    out = tmp_path / "out"
    convert_coco(js, idir, out)
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_coco(js, idir, out)
    r = convert_coco(js, idir, out, keep_crowd=True, overwrite=True)
    assert _labels(out)["x.jpg"] == "1 0.300000 0.500000 0.400000 0.500000\n0 0.050000 0.062500 0.100000 0.125000\n"
    assert not any(i.reason.startswith("crowd") for i in r.issues)


def test_split_seeded_and_bounded():
    names = [f"{i}.jpg" for i in range(50)]
    a, b = split_names(names, 0.2, 0), split_names(list(reversed(names)), 0.2, 0)
    assert a == b and len(a) == 10
    assert split_names(names, 0.2, 1) != a
    assert len(split_names(names[:2], 0.01, 0)) == 1  # both splits non-empty
    assert split_names(names, 0.0, 0) == set()
    with pytest.raises(ValueError):
        split_names(names, 1.0, 0)


@pytest.fixture
def restore_logger():
    """The CLI configures the project logger (handler, propagate=False); undo that for other tests."""
    from utils.log import LOGGER
    saved = (list(LOGGER.handlers), LOGGER.level, LOGGER.propagate)
    yield
    LOGGER.handlers[:], LOGGER.level, LOGGER.propagate = saved[0], saved[1], saved[2]


def test_cli(coco, voc, tmp_path, capsys, restore_logger):
    js, idir = coco
    assert main(["coco", "--json", str(js), "--img-dir", str(idir), "--out", str(tmp_path / "c"), "--val", "0.25"]) == 0
    text = capsys.readouterr().out
    assert "2 classes ['car', 'person']" in text and "skipped 5" in text and "report.txt" in text
    xd, vidir = voc
    assert main(["voc", "--xml-dir", str(xd), "--img-dir", str(vidir), "--out", str(tmp_path / "v"),
                 "--names", "cat", "dog", "--keep-difficult", "--seed", "3"]) == 0
    assert (tmp_path / "v" / "data.yaml").is_file()
    assert main(["coco", "--json", str(tmp_path / "nope.json"), "--img-dir", str(idir), "--out",
                 str(tmp_path / "d")]) == 1


# --------------------------------------------------------------------------- all-or-nothing output
def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_failed_overwrite_keeps_the_old_dataset(coco, tmp_path, monkeypatch):
    """A full disk halfway through --overwrite: the previous conversion is intact, nothing half-written."""
    import errno
    import os

    import utils.data.convert as C
    from utils.atomic import WriteError
    from utils.cli import one_line
    js, idir = coco
    out = tmp_path / "out"
    convert_coco(js, idir, out, copy=True)
    (out / "notes.txt").write_text("the user's own file")
    before = _tree(out)
    calls = []
    real = C.shutil.copy2

    def copy2(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)
    monkeypatch.setattr(C.shutil, "copy2", copy2)
    with pytest.raises(WriteError) as ei:
        convert_coco(js, idir, out, keep_crowd=True, copy=True, overwrite=True)
    assert _tree(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["data.yaml", "images", "labels", "notes.txt", "report.txt"]
    assert str(out) in one_line(ei.value) and "No space left on device" in one_line(ei.value)


def test_swap_failure_restores_old_outputs(coco, tmp_path, monkeypatch):
    import utils.data.convert as C
    js, idir = coco
    out = tmp_path / "out"
    convert_coco(js, idir, out)
    before = _tree(out)
    real = C.os.replace

    def replace(src, dst):
        if Path(dst) == out / "labels" and ".old" not in str(src):  # the new labels cannot be moved in
            raise OSError(5, "Input/output error", str(src), None, str(dst))
        return real(src, dst)
    monkeypatch.setattr(C.os, "replace", replace)
    with pytest.raises(OSError):
        convert_coco(js, idir, out, keep_crowd=True, overwrite=True)
    assert _tree(out) == before and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_unreadable_source_is_named(coco, tmp_path, monkeypatch):
    import utils.data.convert as C
    js, idir = coco

    def copy2(src, dst):
        raise PermissionError(13, "Permission denied", str(src))
    monkeypatch.setattr(C.shutil, "copy2", copy2)
    with pytest.raises(PermissionError) as ei:
        convert_coco(js, idir, tmp_path / "o", copy=True)
    assert str(idir) in str(ei.value.filename)
    assert not (tmp_path / "o" / "data.yaml").exists() and not list((tmp_path / "o").iterdir())


def test_named_pipes_are_not_read(voc, coco, tmp_path):
    import os
    xd, vidir = voc
    os.mkfifo(xd / "pipe.xml")  # ElementTree would block on it
    r = convert_voc(xd, vidir, tmp_path / "v", names=["cat", "dog"])
    assert any(i.where == str(xd / "pipe.xml") and i.reason.startswith("not a regular file") for i in r.issues)
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(ValueError, match="pipe.json: not a regular file"):
        convert_coco(tmp_path / "pipe.json", coco[1], tmp_path / "c")


def test_write_failure_names_the_output_file(coco, tmp_path, monkeypatch):
    import errno
    import os

    import utils.data.convert as C
    from utils.atomic import WriteError
    js, idir = coco
    monkeypatch.chdir(tmp_path)  # a relative --out

    def copy2(src, dst):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(dst))
    monkeypatch.setattr(C.shutil, "copy2", copy2)
    with pytest.raises(WriteError) as ei:
        convert_coco(js, idir, Path("rel_out"), copy=True)
    assert Path(ei.value.filename).parent == Path("rel_out", "images", "train")  # as the user named it
    assert ei.value.strerror == f"cannot write: {os.strerror(errno.EDQUOT)}"
    assert list(Path("rel_out").iterdir()) == []


def test_malformed_coco_json_names_the_file(coco, tmp_path):
    js, idir = coco
    good = json.loads(js.read_text())
    for cats in ([{"name": "car"}], [{"id": "2", "name": "car"}], ["car"]):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**good, "categories": cats}))
        with pytest.raises(ValueError, match=r"bad.json: categories\[0\] needs an integer 'id' and a 'name'"):
            convert_coco(bad, idir, tmp_path / "o")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({**good, "images": good["images"] + [7], "annotations": good["annotations"] + ["x"]}))
    r = convert_coco(odd, idir, tmp_path / "o2")
    assert any(i.reason.startswith("malformed image entry") for i in r.issues)
    assert any(i.reason.startswith("malformed annotation") for i in r.issues)
