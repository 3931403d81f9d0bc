"""Tests for utils/data/config.py: names/nc, path resolution, clear errors, built-in hook, shipped yamls."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from utils.data.config import DatasetConfigError, check_dataset, parse_names
from utils.safe_yaml import YamlError, check_data_size, load_yaml

ROOT = Path(__file__).resolve().parents[1]


def _tree(root: Path, splits=("train", "val")) -> Path:
    for s in splits:
        (root / "images" / s).mkdir(parents=True, exist_ok=True)
    return root


def _yaml(path: Path, d: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(d))
    return path


def test_names_list_mapping_and_nc():
    assert parse_names(["a", "b"], None, "x") == (2, ["a", "b"])
    assert parse_names({1: "b", 0: "a"}, 2, "x") == (2, ["a", "b"])
    assert parse_names({"0": "a", "1": "b"}, None, "x") == (2, ["a", "b"])
    assert parse_names(None, 2, "x") == (2, ["class0", "class1"])
    with pytest.raises(DatasetConfigError, match="x: 'nc' is 3 but 'names' has 2 entries"):
        parse_names(["a", "b"], 3, "x")
    with pytest.raises(DatasetConfigError, match="contiguous"):
        parse_names({0: "a", 2: "c"}, None, "x")
    with pytest.raises(DatasetConfigError, match="positive integer"):
        parse_names(["a"], "1", "x")
    with pytest.raises(DatasetConfigError, match="x: 'nc' is 1000000000, more than"):
        parse_names(None, 10 ** 9, "x")  # would build a billion default names


def test_path_root_relative_to_yaml_folder(tmp_path, monkeypatch):
    _tree(tmp_path / "sets" / "ds", ("train", "val", "test"))
    y = _yaml(tmp_path / "cfg" / "d.yaml", {"path": "../sets/ds", "train": "images/train", "val": "images/val",
                                          "test": "images/test", "names": {0: "cat", 1: "dog"}})
    monkeypatch.chdir(tmp_path)  # elsewhere: the result must not depend on the cwd
    d = check_dataset(y)
    root = (tmp_path / "sets" / "ds").resolve()
    assert d["path"] == str(root)
    assert d["train"] == str(root / "images/train") and d["val"] == str(root / "images/val")
    assert d["test"] == str(root / "images/test")
    assert d["nc"] == 2 and d["names"] == ["cat", "dog"] and d["yaml_file"] == str(y.resolve())
    assert d["coco"] is False


def test_no_path_yaml_folder_then_cwd(tmp_path, monkeypatch):
    _tree(tmp_path / "cfg" / "local")
    _tree(tmp_path / "work" / "cwdset")
    y = _yaml(tmp_path / "cfg" / "d.yaml", {"train": "local/images/train", "val": "cwdset/images/val",
                                          "test": None, "nc": 1})
    monkeypatch.chdir(tmp_path / "work")
    d = check_dataset(y)
    assert d["train"] == str((tmp_path / "cfg" / "local" / "images" / "train").resolve())  # yaml folder first
    assert d["val"] == str((tmp_path / "work" / "cwdset" / "images" / "val").resolve())  # then the cwd
    assert d["test"] is None


def test_lists_and_txt_splits(tmp_path):
    _tree(tmp_path / "a")
    _tree(tmp_path / "b")
    (tmp_path / "val.txt").write_text("a/images/val/x.jpg\n")
    y = _yaml(tmp_path / "d.yaml", {"train": ["a/images/train", "b/images/train"], "val": "val.txt", "nc": 1})
    d = check_dataset(y)
    assert d["train"] == [str((tmp_path / p).resolve()) for p in ("a/images/train", "b/images/train")]
    assert d["val"] == str((tmp_path / "val.txt").resolve())


def test_clear_errors(tmp_path):
    _tree(tmp_path / "ds")
    y = _yaml(tmp_path / "bad_nc.yaml", {"path": "ds", "train": "images/train", "val": "images/val",
                                       "nc": 3, "names": ["a", "b"]})
    with pytest.raises(DatasetConfigError, match=rf"{y.resolve()}: 'nc' is 3 but 'names' has 2"):
        check_dataset(y)
    y = _yaml(tmp_path / "missing.yaml", {"path": "ds", "train": "images/train", "val": "images/nope", "nc": 1,
                                        "download": "see comments"})
    with pytest.raises(DatasetConfigError, match=r"missing.yaml: 'val' split not found: .*images/nope.*download"):
        check_dataset(y)
    y = _yaml(tmp_path / "noval.yaml", {"path": "ds", "train": "images/train", "nc": 1})
    with pytest.raises(DatasetConfigError, match="noval.yaml: missing 'val' split"):
        check_dataset(y)
    with pytest.raises(FileNotFoundError, match="dataset yaml not found"):
        check_dataset(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(DatasetConfigError, match="mapping"):
        check_dataset(tmp_path / "list.yaml")
    # a missing test split is only an error when required
    y = _yaml(tmp_path / "t.yaml", {"path": "ds", "train": "images/train", "val": "images/val",
                                  "test": "images/test", "nc": 1})
    with pytest.raises(DatasetConfigError, match="'test' split not found"):
        check_dataset(y)
    assert check_dataset(y, require=("train", "val"))["test"].endswith("images/test")


def test_yaml_cannot_run_code(tmp_path):
    (tmp_path / "evil.yaml").write_text("train: !!python/object/apply:os.system ['echo hacked']\nval: x\nnc: 1\n")
    with pytest.raises(yaml.YAMLError):
        check_dataset(tmp_path / "evil.yaml")


def test_builtin_hook_and_coco_keys(tmp_path, monkeypatch):
    import utils.data.config
    calls = []

    def fake_ensure(root):
        calls.append(Path(root))
        _tree(Path(root))

    monkeypatch.setattr(utils.data.config, "ensure_shapes", fake_ensure)
    y = _yaml(tmp_path / "data" / "s.yaml", {"builtin": "shapes", "path": "../gen/shapes", "train": "images/train",
                                           "val": "images/val", "names": ["a", "b"], "coco": True,
                                           "coco_json": "ann.json", "category_ids": {0: 3, 1: 7}})
    d = check_dataset(y)
    assert calls == [(tmp_path / "gen" / "shapes").resolve()]
    assert d["train"] == str((tmp_path / "gen" / "shapes" / "images" / "train").resolve())
    assert d["coco"] is True and d["category_ids"] == [3, 7]
    assert d["coco_json"] == str((tmp_path / "gen" / "shapes" / "ann.json").resolve())
    bad = _yaml(tmp_path / "data" / "b.yaml", {"builtin": "circles", "path": ".", "train": "a", "val": "b", "nc": 1})
    with pytest.raises(DatasetConfigError, match="unknown 'builtin'"):
        check_dataset(bad)


def test_dict_input():
    with pytest.raises(DatasetConfigError, match="dataset dict: missing 'train'"):
        check_dataset({"nc": 1, "val": "/"})


def test_shipped_yamls_parse():
    coco = yaml.safe_load((ROOT / "data" / "coco.yaml").read_text())
    assert coco["nc"] == 80 and len(coco["names"]) == 80 and coco["coco"] is True
    c128 = yaml.safe_load((ROOT / "data" / "coco128.yaml").read_text())
    assert c128["names"] == coco["names"] and c128["coco"] is True
    assert (ROOT / "data" / c128["path"]).resolve() == (ROOT.parent / "shared" / "datasets" / "coco128").resolve()


def test_coco128_yaml_resolves(coco128_dir, monkeypatch, tmp_path):
    if coco128_dir.resolve() != (ROOT.parent / "shared" / "datasets" / "coco128").resolve():
        pytest.skip("coco128 is not at ../shared (MOY_SHARED points elsewhere)")
    monkeypatch.chdir(tmp_path)
    d = check_dataset(ROOT / "data" / "coco128.yaml")
    assert d["train"] == str((coco128_dir / "images" / "train2017").resolve())
    assert d["val"] == str((coco128_dir / "images" / "val2017").resolve())


def test_hyp_files_match_yolov7():
    tiny = yaml.safe_load((ROOT / "data" / "hyp.scratch.tiny.yaml").read_text())
    p5 = yaml.safe_load((ROOT / "data" / "hyp.scratch.p5.yaml").read_text())
    assert list(tiny) == list(p5)
    expect_tiny = dict(lr0=0.01, lrf=0.01, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0,
                       warmup_momentum=0.8, warmup_bias_lr=0.1, box=0.05, cls=0.5, cls_pw=1.0, obj=1.0, obj_pw=1.0,
                       iou_t=0.2, anchor_t=4.0, fl_gamma=0.0, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=0.0,
                       translate=0.1, scale=0.5, shear=0.0, perspective=0.0, flipud=0.0, fliplr=0.5, mosaic=1.0,
                       mixup=0.05, copy_paste=0.0, paste_in=0.05, loss_ota=1)
    assert tiny == expect_tiny
    diff = {k: (tiny[k], p5[k]) for k in tiny if tiny[k] != p5[k]}
    assert diff == {"lrf": (0.01, 0.1), "cls": (0.5, 0.3), "obj": (1.0, 0.7), "translate": (0.1, 0.2),
                    "scale": (0.5, 0.9), "mixup": (0.05, 0.15), "paste_in": (0.05, 0.15)}


# --------------------------------------------------------------------------- the safe yaml reader
def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\ntrain: x\nval: y\nnames: *a{levels}\n"


def test_load_yaml_refuses_billion_laughs_quickly(tmp_path):
    y = tmp_path / "bomb.yaml"
    y.write_text(billion_laughs())
    assert y.stat().st_size < 1024
    with pytest.raises(YamlError, match=r"bomb.yaml: refused: .*aliases expand to more than"):
        load_yaml(y)
    with pytest.raises(YamlError, match="billion laughs"):  # the dataset checker uses the same reader
        check_dataset(y)
    assert isinstance(YamlError("x"), ValueError) and isinstance(YamlError("x"), yaml.YAMLError)


def test_load_yaml_small_aliases_still_work(tmp_path):
    y = tmp_path / "ok.yaml"
    y.write_text("base: &b {lr0: 0.01, momentum: 0.9}\nother:\n  <<: *b\n  lr0: 0.02\nl: [*b, *b]\n")
    d = load_yaml(y)
    assert d["other"] == {"lr0": 0.02, "momentum": 0.9} and d["l"] == [d["base"]] * 2
    y.write_text(billion_laughs(3))  # 9^4 = 6561 nodes: under the budget, over a tiny one
    assert len(load_yaml(y)["names"]) == 9
    with pytest.raises(YamlError, match="more than 1000 nodes"):
        load_yaml(y, max_nodes=1000)


@pytest.mark.parametrize("text, match", [
    ("a: &a [*a]\n", "refers to itself"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("a: 1\nb: [1, 2\nc: 3\n", r"bad.yaml:3: invalid yaml"),
    ("a: !!python/object/apply:os.system ['echo hacked']\n", r"bad.yaml:1: invalid yaml: .*constructor"),
    ("- a\n- b\n", "expected a mapping at the top level, got list"),
    ("a: 1\n---\nb: 2\n", "invalid yaml: expected a single document"),
])
def test_load_yaml_errors_name_file_and_line(tmp_path, text, match):
    y = tmp_path / "bad.yaml"
    y.write_text(text)
    with pytest.raises(YamlError, match=match):
        load_yaml(y)


def test_load_yaml_size_kind_encoding_and_missing(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 2000 + "\n")
    with pytest.raises(YamlError, match="larger than"):
        load_yaml(big, max_bytes=1000)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # a named pipe would block a plain open(): refused before reading
    with pytest.raises(YamlError, match="not a regular file"):
        load_yaml(fifo, "hyp yaml")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(YamlError, match="not UTF-8"):
        load_yaml(tmp_path / "latin1.yaml")
    with pytest.raises(FileNotFoundError, match="hyp yaml not found"):
        load_yaml(tmp_path / "none.yaml", "hyp yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbfnc: 2\n")
    assert load_yaml(tmp_path / "bom.yaml") == {"nc": 2}
    assert load_yaml(tmp_path / "empty.yaml", mapping=False) is None


def test_check_data_size_for_unpickled_data():
    x: list = ["lol"] * 9
    for _ in range(30):
        x = [x, x]  # shared references: tiny in memory, 2^30 entries when walked
    with pytest.raises(YamlError, match="ckpt.pt: cfg: refused"):
        check_data_size({"cfg": x}, "ckpt.pt: cfg")
    check_data_size({"backbone": [[-1, 1, "Conv", [16, 3, 2]]] * 50}, "model")
    loop: list = []
    loop.append(loop)
    with pytest.raises(YamlError, match="refers to itself"):
        check_data_size(loop, "cfg")


def test_category_ids_must_be_integers(tmp_path):
    _tree(tmp_path / "ds")
    base = {"path": "ds", "train": "images/train", "val": "images/val", "names": ["a", "b"]}
    ok = _yaml(tmp_path / "ok.yaml", {**base, "category_ids": {0: 7, 1: "9"}})
    assert check_dataset(ok)["category_ids"] == [7, 9]
    for bad in (["x", 2], {"a": 1, "b": 2}, 5):
        y = _yaml(tmp_path / "bad.yaml", {**base, "category_ids": bad})
        with pytest.raises(DatasetConfigError, match="bad.yaml: 'category_ids' must be a list of integers"):
            check_dataset(y)
