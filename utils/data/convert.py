"""Dataset converters: Pascal VOC xml and COCO instances json -> YOLO labels in the YOLOv7 layout.

Both write ``OUT/images/{train,val}/``, ``OUT/labels/{train,val}/`` (one ``cls cx cy w h`` line
per object, normalised by the image size; an empty file for an image without objects) and a
ready ``OUT/data.yaml``. Images are hard-linked when possible, else copied (``copy=True``
always copies). The train/val split is a seeded shuffle of the sorted image names.

Nothing is dropped silently: every skipped annotation or image (unknown class, degenerate
box, missing or unreadable image, crowd, difficult, ...) and every fixed one (box clipped to
the image, size disagreeing with the image file) is logged and listed in ``OUT/report.txt``.

CLI::

    python -m utils.data.convert voc --xml-dir Annotations --img-dir JPEGImages --out out [--names a b]
    python -m utils.data.convert coco --json instances.json --img-dir images --out out [--keep-crowd]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import yaml
from PIL import Image

from utils.atomic import WriteError
from utils.boxes import xyxy2xywhn
from utils.cli import one_line, run_cli
from utils.data.files import IMG_FORMATS  # the formats training reads
from utils.log import LOGGER, set_logging

_LOG_LIMIT = 100  # issues logged one by one; all of them always go to OUT/report.txt


@dataclass
class Issue:
    """One skipped (``kind='skipped'``) or repaired (``kind='fixed'``) item: where and why."""

    where: str
    reason: str
    kind: str = "skipped"

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.reason}"


@dataclass
class ConvertResult:
    """What a conversion wrote: class names, images and objects per split, and every issue."""

    out: Path
    names: list[str]
    images: dict[str, int] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    @property
    def skipped(self) -> list[Issue]:
        return [i for i in self.issues if i.kind == "skipped"]

    @property
    def fixed(self) -> list[Issue]:
        return [i for i in self.issues if i.kind == "fixed"]

    def summary(self) -> str:
        """Multi-line human summary (what the CLI prints)."""
        lines = [f"wrote {self.out / 'data.yaml'}: {len(self.names)} classes {self.names}"]
        for s in ("train", "val"):
            lines.append(f"  {s}: {self.images.get(s, 0)} images, {self.objects.get(s, 0)} objects")
        for kind, items in (("skipped", self.skipped), ("fixed", self.fixed)):
            if items:
                by = Counter(_reason_key(i.reason) for i in items)
                lines.append(f"  {kind} {len(items)}: " + ", ".join(f"{k} {n}" for k, n in by.most_common()))
        if self.issues:
            lines.append(f"  every item listed in {self.out / 'report.txt'}")
        return "\n".join(lines)


@dataclass
class _Image:
    """One image to write: source path, output name, size, and (n, 5) labels [cls, x1, y1, x2, y2]."""

    src: Path
    name: str
    w: int
    h: int
    boxes: list[list[float]] = field(default_factory=list)


def _reason_key(reason: str) -> str:
    """Group label for a reason ('unknown class 'dog'' -> 'unknown class')."""
    for k in ("unknown class", "unknown category", "unknown image", "missing image", "unreadable image",
              "unsupported image", "degenerate box", "malformed", "crowd", "difficult", "duplicate",
              "clipped", "size", "unreadable xml", "not a regular file"):
        if reason.startswith(k):
            return k
    return reason


# --------------------------------------------------------------------------- shared helpers
def _image_size(path: Path) -> tuple[int, int]:
    """(w, h) of an image file from its header, raising ValueError when unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # PIL raises many types for bad files
        raise ValueError(f"unreadable image ({type(e).__name__}: {e})") from e
    if w < 1 or h < 1:
        raise ValueError(f"unreadable image (size {w}x{h})")
    return int(w), int(h)


def _resolve_image(img_dir: Path, file_name: str, stem_hint: str | None = None) -> Path | None:
    """Find an image under ``img_dir`` by its recorded name, then by base name, then by stem."""
    cands = [img_dir / file_name, img_dir / Path(file_name).name]
    for c in cands:
        if c.is_file():
            return c
    for stem in dict.fromkeys(s for s in (Path(file_name).stem, stem_hint) if s):
        for ext in IMG_FORMATS:
            for e in (ext, ext.upper()):
                c = img_dir / f"{stem}.{e}"
                if c.is_file():
                    return c
    return None


def _add_box(im, seen: set, cls: int, name: str, corners: tuple, w: float, h: float, where: str,
             issues: list) -> None:
    """Clip pixel corners to the image and add the box to ``im`` unless degenerate or a duplicate (reported)."""
    box = _clip_box(*corners, w, h, where, issues)
    if box is None:
        return
    row = (cls, *box)
    if row in seen:
        issues.append(Issue(where, f"duplicate box for '{name}' {box}"))
        return
    seen.add(row)
    im.boxes.append(list(row))


def _clip_box(x1: float, y1: float, x2: float, y2: float, w: int, h: int, where: str,
              issues: list[Issue]) -> list[float] | None:
    """Clip a pixel box to the image; None (and an issue) when it is not a positive-area box."""
    vals = (x1, y1, x2, y2)
    if not all(math.isfinite(v) for v in vals):
        issues.append(Issue(where, f"degenerate box (non-finite {list(vals)})"))
        return None
    if x2 <= x1 or y2 <= y1:
        issues.append(Issue(where, f"degenerate box (zero or negative size {list(vals)})"))
        return None
    c = [min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)]
    if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
        issues.append(Issue(where, f"degenerate box (outside the {w}x{h} image: {list(vals)})"))
        return None
    if c != [float(v) for v in vals]:
        issues.append(Issue(where, f"clipped box {list(vals)} to the {w}x{h} image", "fixed"))
    return c


def _checked_size(path: Path, w: object, h: object, where: str, issues: list[Issue]) -> tuple[int, int]:
    """The image file's (w, h); notes when the annotation's recorded size disagrees."""
    fw, fh = _image_size(path)
    try:
        rw, rh = int(float(w)), int(float(h))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        rw, rh = 0, 0
    if (rw, rh) != (fw, fh) and (rw > 0 or rh > 0):
        issues.append(Issue(where, f"size {rw}x{rh} in the annotation differs from the image file's "
                                   f"{fw}x{fh}; normalising by the image file's", "fixed"))
    return fw, fh


def _unique_name(src: Path, file_name: str, used: set[str]) -> str:
    """Output file name for an image, unique by stem (label files are named by stem)."""
    name = src.name
    if Path(name).stem.lower() in used:
        name = "_".join(Path(file_name).with_suffix("").parts) + src.suffix
        base, k = Path(name).stem, 1
        while Path(name).stem.lower() in used:
            name, k = f"{base}_{k}{src.suffix}", k + 1
    used.add(Path(name).stem.lower())
    return name


def split_names(names: Sequence[str], val: float, seed: int) -> set[str]:
    """The subset of ``names`` going to val: a seeded shuffle of the sorted names.

    With ``0 < val < 1`` and at least two images, both splits get at least one image.
    """
    if not 0 <= val < 1:
        raise ValueError(f"--val must be in [0, 1), got {val}")
    names = sorted(names)
    n_val = int(round(len(names) * val))
    if val > 0 and len(names) >= 2:
        n_val = min(max(n_val, 1), len(names) - 1)
    perm = np.random.default_rng(seed).permutation(len(names))
    return {names[i] for i in perm[:n_val]}


_OUTPUTS = ("images", "labels", "data.yaml", "report.txt")  # what a conversion owns in OUT


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace an earlier conversion unless ``overwrite`` (nothing is deleted here)."""
    existing = [out / p for p in _OUTPUTS if (out / p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(p.name for p in existing)}; "
                              f"pass overwrite=True (--overwrite) to replace them")


def _swap_in(stage: Path, out: Path) -> None:
    """Move the staged outputs into ``out``, the old ones aside; undo every move when one fails."""
    old = stage / ".old"
    old.mkdir()
    moved, placed = [], []
    try:
        for name in _OUTPUTS:
            if (out / name).exists():
                os.replace(out / name, old / name)
                moved.append(name)
        for name in _OUTPUTS:
            if (stage / name).exists():
                os.replace(stage / name, out / name)
                placed.append(name)
    except OSError:
        for name in placed:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
        for name in moved:
            os.replace(old / name, out / name)
        raise


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A temp folder inside ``out`` for the whole new dataset; it replaces the old outputs only when complete.

    A failure (full disk, unreadable image, ...) leaves ``out`` as it was and no temp folder;
    a write failure is a :class:`~utils.atomic.WriteError` naming the file and the cause.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(os.path.abspath(tempfile.mkdtemp(prefix=".convert.", suffix=".tmp", dir=out)))
    except OSError as e:
        raise WriteError(e.errno, f"cannot write: {e.strerror or e}", str(out)) from e
    try:
        yield stage
        _swap_in(stage, out)
    except OSError as e:
        names = [str(n) for n in (e.filename, e.filename2) if n is not None]
        staged = [n for n in names if n.startswith(str(stage) + os.sep)]
        if isinstance(e, WriteError) or (names and not staged):
            raise  # a source image that cannot be read, a failed swap: the error names its own file
        where = out / Path(staged[0]).relative_to(stage) if staged else out
        raise WriteError(e.errno, f"cannot write: {e.strerror or e}", str(where)) from e
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _place(src: Path, dst: Path, copy: bool) -> None:
    """Hard-link ``src`` to ``dst`` when allowed and possible, else copy it."""
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _write(out: Path, images: list[_Image], names: list[str], issues: list[Issue], val: float, seed: int,
           copy: bool, header: str, extra: dict | None = None) -> ConvertResult:
    """Write the YOLOv7 layout, data.yaml and report.txt for the collected images (all or nothing)."""
    val_set = split_names([im.name for im in images], val, seed)
    res = ConvertResult(out=out, names=list(names), issues=issues)
    with _staged(out) as stage:
        for s in ("train", "val"):
            (stage / "images" / s).mkdir(parents=True, exist_ok=True)
            (stage / "labels" / s).mkdir(parents=True, exist_ok=True)
            res.images[s], res.objects[s] = 0, 0
        for im in sorted(images, key=lambda i: i.name):
            s = "val" if im.name in val_set else "train"
            _place(im.src, stage / "images" / s / im.name, copy)
            lines = _label_lines(im)
            (stage / "labels" / s / f"{Path(im.name).stem}.txt").write_text("".join(ln + "\n" for ln in lines))
            res.images[s] += 1
            res.objects[s] += len(lines)
        val_dir = "images/val"
        if res.images["val"] == 0:
            val_dir = "images/train"
            LOGGER.warning("convert: the val split is empty (--val %s, %d images); data.yaml's val points at "
                           "images/train", val, len(images))
        cfg = {"train": "images/train", "val": val_dir, "nc": len(names), "names": list(names), **(extra or {})}
        (stage / "data.yaml").write_text(f"# {header}\n# no 'path': train/val are relative to this file's folder\n"
                                         + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
        if issues:
            (stage / "report.txt").write_text("".join(f"{i}\n" for i in issues))
    for i in issues[:_LOG_LIMIT]:
        LOGGER.warning("convert: %s", i)
    if len(issues) > _LOG_LIMIT:
        LOGGER.warning("convert: ... %d more, all listed in %s", len(issues) - _LOG_LIMIT, out / "report.txt")
    LOGGER.info("convert: wrote %d train + %d val images (%d + %d objects) to %s; %d skipped, %d fixed",
                res.images["train"], res.images["val"], res.objects["train"], res.objects["val"], out,
                len(res.skipped), len(res.fixed))
    return res


def _label_lines(im: _Image) -> list[str]:
    """``cls cx cy w h`` lines, normalised by the image size."""
    if not im.boxes:
        return []
    b = np.array(im.boxes, np.float64)
    xywh = xyxy2xywhn(b[:, 1:5], w=im.w, h=im.h)
    return [f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}" for c, (x, y, bw, bh) in zip(b[:, 0], xywh)]


# --------------------------------------------------------------------------- VOC
def _voc_text(node: ET.Element, tag: str) -> str | None:
    child = node.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def convert_voc(xml_dir: Path | str, img_dir: Path | str, out: Path | str, names: Sequence[str] | None = None,
                val: float = 0.2, seed: int = 0, keep_difficult: bool = False, copy: bool = False,
                overwrite: bool = False) -> ConvertResult:
    """Pascal VOC xml files (one per image) -> YOLO dataset under ``out``.

    Class order is ``names`` when given (objects of other classes are skipped and reported),
    else the sorted set of names found. VOC's 1-based pixel corners are shifted by -1, as
    darknet's voc_label.py does, then normalised by the image size. ``difficult`` objects
    are dropped (and reported) unless ``keep_difficult``.
    """
    xml_dir, img_dir, out = Path(xml_dir), Path(img_dir), Path(out)
    found = sorted(xml_dir.glob("*.xml"))
    xmls = [x for x in found if x.is_file()]  # a named pipe would block the parser
    if not xmls:
        raise FileNotFoundError(f"no .xml files in {xml_dir}")
    if not img_dir.is_dir():
        raise FileNotFoundError(f"image folder {img_dir} does not exist")
    if names is not None and len(set(names)) != len(names):
        raise ValueError(f"duplicate class names in --names {list(names)}")
    issues: list[Issue] = [Issue(str(x), "not a regular file; not read") for x in found if not x.is_file()]
    parsed = []  # (xml path, root element)
    for x in xmls:
        try:
            parsed.append((x, ET.parse(x).getroot()))
        except (ET.ParseError, OSError) as e:
            issues.append(Issue(str(x), f"unreadable xml ({e}); all its objects"))
    if names is None:
        found = {(_voc_text(o, "name") or "") for _, r in parsed for o in r.iter("object")}
        names = sorted(n for n in found if n)
    index = {n: i for i, n in enumerate(names)}
    _prepare_out(out, overwrite)
    images: list[_Image] = []
    used: set[str] = set()
    by_src: dict[Path, Path] = {}
    for x, root in parsed:
        objs = list(root.iter("object"))
        file_name = _voc_text(root, "filename") or x.stem
        src = _resolve_image(img_dir, file_name, x.stem)
        if src is None:
            issues.append(Issue(str(x), f"missing image '{file_name}' under {img_dir}; its {len(objs)} objects"))
            continue
        if src.suffix[1:].lower() not in IMG_FORMATS:
            issues.append(Issue(str(x), f"unsupported image format {src.name}; its {len(objs)} objects"))
            continue
        if src.resolve() in by_src:
            issues.append(Issue(str(x), f"duplicate: {src.name} is already annotated by "
                                        f"{by_src[src.resolve()].name}; its {len(objs)} objects"))
            continue
        size = root.find("size")
        try:
            w, h = _checked_size(src, _voc_text(size, "width") if size is not None else None,
                                 _voc_text(size, "height") if size is not None else None, str(x), issues)
        except ValueError as e:
            issues.append(Issue(str(x), f"{e} {src}; its {len(objs)} objects"))
            continue
        by_src[src.resolve()] = x
        im = _Image(src=src, name=_unique_name(src, file_name, used), w=w, h=h)
        seen = set()
        for k, o in enumerate(objs):
            where = f"{x}:object {k}"
            name = _voc_text(o, "name") or ""
            if name not in index:
                issues.append(Issue(where, f"unknown class '{name}' (not in {list(names)})"))
                continue
            if (_voc_text(o, "difficult") or "0") not in ("0", "false", "") and not keep_difficult:
                issues.append(Issue(where, f"difficult '{name}' dropped (use --keep-difficult to keep)"))
                continue
            bb = o.find("bndbox")
            try:
                x1, y1, x2, y2 = (float(_voc_text(bb, t)) for t in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore
            except (TypeError, ValueError, AttributeError):
                issues.append(Issue(where, f"malformed bndbox for '{name}'"))
                continue
            _add_box(im, seen, index[name], name, (x1 - 1, y1 - 1, x2 - 1, y2 - 1), w, h, where, issues)
        images.append(im)
    if not images:
        raise RuntimeError(f"no usable image found for the xml files in {xml_dir} (first issues: "
                           f"{'; '.join(map(str, issues[:3]))})")
    return _write(out, images, list(names), issues, val, seed, copy,
                  f"converted from Pascal VOC {xml_dir} by python -m utils.data.convert voc")


# --------------------------------------------------------------------------- COCO
def _coco_categories(cats: list, json_path: Path) -> list[dict]:
    """The categories sorted by id; each must be a mapping with an integer 'id' (unique) and a 'name'."""
    for k, c in enumerate(cats):
        if not isinstance(c, dict) or "name" not in c or isinstance(c.get("id"), bool) \
                or not isinstance(c.get("id"), int):
            raise ValueError(f"{json_path}: categories[{k}] needs an integer 'id' and a 'name', got {str(c)[:80]}")
    cats = sorted(cats, key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{json_path}: duplicate category ids {ids}")
    return cats


def _coco_boxes(im: _Image, anns: list[tuple[int, dict]], cat_index: dict, names: list[str], keep_crowd: bool,
                src: str, file_name: str, issues: list[Issue]) -> None:
    """Add the boxes of one image's annotations to ``im``; every skipped or fixed one is an issue."""
    seen: set = set()
    for k, a in anns:
        where = f"{src}:annotation id {a.get('id', f'#{k}')} (image {file_name})"
        cid = a.get("category_id")
        if cid not in cat_index:
            issues.append(Issue(where, f"unknown category id {cid}"))
            continue
        if a.get("iscrowd", 0) and not keep_crowd:
            issues.append(Issue(where, f"crowd '{names[cat_index[cid]]}' dropped (use --keep-crowd to keep)"))
            continue
        bb = a.get("bbox")
        try:
            x, y, bw, bh = (float(v) for v in bb)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            issues.append(Issue(where, f"malformed bbox {bb!r}"))
            continue
        _add_box(im, seen, cat_index[cid], names[cat_index[cid]], (x, y, x + bw, y + bh), im.w, im.h, where, issues)


def convert_coco(json_path: Path | str, img_dir: Path | str, out: Path | str, val: float = 0.2, seed: int = 0,
                 keep_crowd: bool = False, copy: bool = False, overwrite: bool = False) -> ConvertResult:
    """COCO instances json -> YOLO dataset under ``out``.

    Categories sorted by id become contiguous classes 0..nc-1 named from the json. Boxes are
    COCO ``[x, y, w, h]`` pixels normalised by the image size. Crowd annotations
    (``iscrowd: 1``) are dropped (and reported) unless ``keep_crowd``. Images with no
    annotation are kept as background images (empty label file).
    """
    json_path, img_dir, out = Path(json_path), Path(img_dir), Path(out)
    if json_path.exists() and not json_path.is_file():
        raise ValueError(f"{json_path}: not a regular file")
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{json_path}: not a readable json file ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise ValueError(f"{json_path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    if not img_dir.is_dir():
        raise FileNotFoundError(f"image folder {img_dir} does not exist")
    cats = _coco_categories(data["categories"], json_path)
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    names = [str(c["name"]) for c in cats]
    issues: list[Issue] = []
    anns_by_img: dict[object, list[tuple[int, dict]]] = {}
    annotations = data.get("annotations", [])
    for k, a in enumerate(annotations if isinstance(annotations, list) else []):
        if isinstance(a, dict):
            anns_by_img.setdefault(a.get("image_id"), []).append((k, a))
        else:
            issues.append(Issue(f"{json_path}:annotation #{k}", f"malformed annotation {str(a)[:60]!r}"))
    _prepare_out(out, overwrite)
    images: list[_Image] = []
    used: set[str] = set()
    img_ids = set()
    # shallow paths first, so 'x.jpg' keeps its name and 'other/x.jpg' becomes 'other_x.jpg'
    issues += [Issue(str(json_path), f"malformed image entry {str(i)[:60]!r}")
               for i in data["images"] if not isinstance(i, dict)]
    order = sorted((i for i in data["images"] if isinstance(i, dict)),
                   key=lambda i: (len(Path(str(i.get("file_name", ""))).parts), str(i.get("file_name", ""))))
    for info in order:
        iid = info.get("id")
        img_ids.add(iid)
        anns = anns_by_img.get(iid, [])
        file_name = str(info.get("file_name", ""))
        where_img = f"{json_path}:image id {iid} ({file_name})"
        src = _resolve_image(img_dir, file_name) if file_name else None
        if src is None:
            issues.append(Issue(where_img, f"missing image '{file_name}' under {img_dir}; its {len(anns)} annotations"))
            continue
        if src.suffix[1:].lower() not in IMG_FORMATS:
            issues.append(Issue(where_img, f"unsupported image format {src.name}; its {len(anns)} annotations"))
            continue
        try:
            w, h = _checked_size(src, info.get("width"), info.get("height"), where_img, issues)
        except ValueError as e:
            issues.append(Issue(where_img, f"{e}; its {len(anns)} annotations"))
            continue
        im = _Image(src=src, name=_unique_name(src, file_name, used), w=w, h=h)
        _coco_boxes(im, anns, cat_index, names, keep_crowd, f"{json_path}", file_name, issues)
        images.append(im)
    for iid, anns in anns_by_img.items():
        if iid not in img_ids:
            for k, a in anns:
                issues.append(Issue(f"{json_path}:annotation id {a.get('id', f'#{k}')}", f"unknown image id {iid}"))
    if not images:
        raise RuntimeError(f"no usable image found for {json_path} under {img_dir} (first issues: "
                           f"{'; '.join(map(str, issues[:3]))})")
    header = (f"converted from COCO {json_path.name} by python -m utils.data.convert coco; "
              f"category_ids = the json's category id of each class (for COCO-json results)")
    return _write(out, images, names, issues, val, seed, copy, header,
                  {"category_ids": [int(c["id"]) for c in cats]})


# --------------------------------------------------------------------------- CLI
def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.data.convert",
                                description="Convert Pascal VOC or COCO annotations to a YOLOv7-layout dataset.")
    sub = p.add_subparsers(dest="fmt", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--img-dir", type=Path, required=True, help="folder with the images")
    common.add_argument("--out", type=Path, required=True, help="output dataset root")
    common.add_argument("--val", type=float, default=0.2, help="fraction of images for the val split")
    common.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    common.add_argument("--copy", action="store_true", help="always copy images (default: hard-link when possible)")
    common.add_argument("--overwrite", action="store_true", help="replace images/, labels/, data.yaml in --out")
    common.add_argument("--verbose", action="store_true", help="show the full traceback of an error")
    v = sub.add_parser("voc", parents=[common], help="Pascal VOC xml -> YOLO")
    v.add_argument("--xml-dir", type=Path, required=True, help="folder with the .xml annotations")
    v.add_argument("--names", nargs="+", default=None, help="class order (default: sorted names found)")
    v.add_argument("--keep-difficult", action="store_true", help="keep objects marked difficult (default: drop)")
    c = sub.add_parser("coco", parents=[common], help="COCO instances json -> YOLO")
    c.add_argument("--json", type=Path, required=True, help="instances_*.json")
    c.add_argument("--keep-crowd", action="store_true", help="keep iscrowd=1 annotations (default: drop)")
    a = p.parse_args(list(argv) if argv is not None else None)
    set_logging(verbose=False)  # issues are logged as warnings, one per line; the summary is printed below
    try:
        if a.fmt == "voc":
            res = convert_voc(a.xml_dir, a.img_dir, a.out, a.names, a.val, a.seed, a.keep_difficult, a.copy,
                              a.overwrite)
        else:
            res = convert_coco(a.json, a.img_dir, a.out, a.val, a.seed, a.keep_crowd, a.copy, a.overwrite)
    except (OSError, ValueError, RuntimeError) as e:
        if a.verbose:
            raise
        print(f"python -m utils.data.convert: error: {one_line(e)}", file=sys.stderr)
        return 1
    print(res.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, prog="python -m utils.data.convert"))
