"""``python -m utils.datasets --data my.yaml [--img-size 640]``: check every split of a dataset yaml without
training; exit 0 when every split has usable images, else 1.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional, Sequence

from utils.data.cache import NoUsableImagesError, scan_dataset
from utils.data.config import DatasetConfigError, check_dataset

# --------------------------------------------------------------------------- inference sources
from utils.data.sources import LoadImages, LoadStreams  # noqa: F401,E402
from utils.safe_yaml import YamlError


# --------------------------------------------------------------------------- check CLI
def check_splits(data: Any, img_size: int = 640) -> tuple[bool, list[str]]:
    """Verify every split of a dataset yaml; (ok, report lines)."""
    d = check_dataset(data)
    ok, out = True, [f"dataset {d.get('yaml_file') or 'dict'}: nc={d['nc']} ({', '.join(d['names'][:10])}"
                     f"{', ...' if d['nc'] > 10 else ''}), img-size {img_size}"]
    for split in ("train", "val", "test"):
        if d.get(split) is None:
            continue
        try:
            rep = scan_dataset(d[split], nc=d["nc"], prefix=f"{split}: ").report
        except NoUsableImagesError as e:
            rep, ok = e.report, False
        out.append(rep.summary())
        out += [f"  {m}" for m in rep.lines()]
        if rep.usable == 0:
            ok = False
            out.append(f"{split}: ERROR: no usable images")
    return ok, out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Check a YOLO dataset yaml: every image and label of every split")
    ap.add_argument("--data", required=True, help="dataset yaml")
    ap.add_argument("--img-size", type=int, default=640, help="image size (reported)")
    ap.add_argument("--verbose", action="store_true", help="show the full traceback of an error")
    args = ap.parse_args(argv)
    try:
        ok, lines = check_splits(args.data, args.img_size)
    except (DatasetConfigError, YamlError, FileNotFoundError) as e:
        if args.verbose:
            raise
        print(f"ERROR: {e}")
        return 1
    print("\n".join(lines))
    print("OK" if ok else "FAILED: a split has no usable images")
    return 0 if ok else 1
