"""Convert an official YOLOv7 ``.pt`` (a pickled ``Model`` module) into the project's format.

Official YOLOv7 checkpoints store whole Python objects, and a pickle can run any code its author
chose. The project's loaders refuse such files; this script reads them, only with ``--trust-pickle``,
and still through ``torch.load(weights_only=True)``: the file's globals are listed first (without
unpickling) and only these are allowed: torch.nn layer classes, numpy arrays, and plain ``nn.Module``
shells standing in for YOLOv7's own classes (``models.*``, ``utils.*``, never imported from this
project). So nothing in the file is executed; only the stored state (parameters, buffers, ``yaml``,
``names``) is read, and files from any YOLOv7 revision work. Any other global is refused by name.
It takes the ``ema`` module when present, else ``model`` (as YOLOv7's own ``attempt_load`` does), and
writes a plain tensors-and-data training checkpoint that every project tool loads.

Usage::

    python weights/convert_yolov7.py --src yolov7-tiny.pt --trust-pickle \\
        [--cfg cfg/training/yolov7-tiny.yaml] --out weights/yolov7-tiny-converted.pt
"""
from __future__ import annotations

import argparse
import copy
import importlib
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Union

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from utils.checkpoint import (
    CORRUPT,
    FORMAT,
    TORCH_GLOBAL_PREFIXES,
    CheckpointError,
    CorruptCheckpointError,
    load_checkpoint,
    pickle_globals,
    save_checkpoint,
)
from utils.cli import fail, run_cli

PICKLE_WARNING = """\
WARNING: --trust-pickle: {src} holds pickled Python objects. A pickle runs whatever code its author
  put in it; this converter reads it with torch's weights-only unpickler and allows only torch.nn
  layers, numpy arrays and state-only stand-ins for YOLOv7's classes, so none of it is executed.
  Still convert only files from a source you trust (e.g. the official YOLOv7 release page).
  The converted output is a plain tensor checkpoint that loads safely from then on."""

_YOLOV7_PACKAGES = ("models", "utils")


class ConversionError(RuntimeError):
    """The source cannot be converted (message says why; ``details`` holds a longer report, if any)."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


# --------------------------------------------------------------------------- trusted unpickling
_SHELLS: dict[tuple[str, str], type] = {}


def _shell_class(module: str, name: str) -> type:
    """An empty nn.Module subclass standing in for YOLOv7 class ``module.name``."""
    key = (module, name)
    if key not in _SHELLS:
        def __init__(self, *args: Any, **kwargs: Any) -> None:  # reduce-with-args objects
            nn.Module.__init__(self)

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{module}.{name} was loaded as a state-only shell; it cannot run")

        _SHELLS[key] = type(name, (nn.Module,), {"__init__": __init__, "forward": forward,
                                                 "__module__": f"yolov7_shell.{module}",
                                                 "__qualname__": name})
    return _SHELLS[key]


def _allowed_global(name: str) -> Optional[Any]:
    """What the weights-only unpickler may build for global ``name``: a shell for a YOLOv7 class, a
    torch.nn layer class, or a numpy array/dtype constructor; None for anything else."""
    module, _, attr = name.rpartition(".")
    top = module.split(".")[0]
    if top in _YOLOV7_PACKAGES:
        return _shell_class(module, attr)
    if top not in ("torch", "numpy"):
        return None
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    if top == "torch":
        return obj if isinstance(obj, type) and issubclass(obj, nn.Module) and module.startswith("torch.nn.") \
            else None
    import numpy as np
    multiarray = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    numpy_data = (np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar)
    return obj if obj in numpy_data or (isinstance(obj, type) and issubclass(obj, np.dtype)) else None


def load_trusted_pickle(path: Union[str, Path]) -> Any:
    """Read a pickled YOLOv7 checkpoint with ``torch.load(weights_only=True)`` and an allowlist made
    from its own globals (see the module docstring); raises ConversionError naming a refused global.
    Only for ``--trust-pickle``."""
    _, names = pickle_globals(Path(path))
    allowed, refused = [], []
    for name in dict.fromkeys(names):
        obj = _allowed_global(name)
        if obj is not None:
            allowed.append((obj, name))
        elif not name.startswith(TORCH_GLOBAL_PREFIXES):  # torch's own plain-data globals: its decision
            refused.append(name)
    if any(name.startswith("numpy.") for name in names):  # dtype objects are rebuilt as their dtype class
        import numpy as np
        allowed += [(c, f"numpy.dtypes.{c.__name__}") for c in vars(np.dtypes).values()
                    if isinstance(c, type) and issubclass(c, np.dtype)]
    if refused:
        raise ConversionError(f"{path}: refused: it needs {', '.join(refused[:5])}, which is not a torch.nn layer, "
                              f"numpy data or a YOLOv7 class")
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- extraction
def extract_yolov7(ckpt: Any, src: str = "checkpoint"
                   ) -> tuple[dict[str, torch.Tensor], Optional[dict], Optional[list]]:
    """(float32 state dict, yaml dict or None, names or None) from a YOLOv7 checkpoint.

    Takes ``ema`` when present, else ``model``; either may be a module or a state dict.
    """
    if isinstance(ckpt, nn.Module):
        m = ckpt
    elif isinstance(ckpt, Mapping):
        m = next((ckpt[k] for k in ("ema", "model", "state_dict") if ckpt.get(k) is not None), None)
        if m is None:
            raise ConversionError(f"{src}: no 'ema', 'model' or 'state_dict' entry (keys: {list(ckpt)[:10]})")
    else:
        raise ConversionError(f"{src}: expected a checkpoint dict or a module, found {type(ckpt).__name__}")
    if isinstance(m, nn.Module):
        sd = m.state_dict()
        yaml_cfg = getattr(m, "yaml", None)
        names = getattr(m, "names", None)
    elif isinstance(m, Mapping) and all(isinstance(v, torch.Tensor) for v in m.values()):
        sd, yaml_cfg, names = dict(m), ckpt.get("cfg"), ckpt.get("names")
    else:
        raise ConversionError(f"{src}: the model entry is a {type(m).__name__}, not a module or state dict")
    out = {}
    for k, v in sd.items():
        k = k[len("module."):] if k.startswith("module.") else k
        v = v.detach().cpu()
        out[k] = v.float() if v.is_floating_point() else v.clone()
    return out, (copy.deepcopy(dict(yaml_cfg)) if isinstance(yaml_cfg, Mapping) else None), \
        (list(names) if isinstance(names, (list, tuple)) else None)


def match_state_dict(src: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, list]:
    """Name/shape comparison of ``src`` against ``model``'s state dict."""
    tgt = model.state_dict()
    rep = {"loaded": [], "mismatched": [], "missing": [], "unused": []}
    for k, v in tgt.items():
        if k not in src:
            rep["missing"].append(k)
        elif src[k].shape != v.shape:
            rep["mismatched"].append((k, tuple(src[k].shape), tuple(v.shape)))
        else:
            rep["loaded"].append(k)
    rep["unused"] = [k for k in src if k not in tgt]
    return rep


def format_report(rep: Mapping[str, list]) -> str:
    lines = [f"{'tensors':<16}{'count':>7}"] + [f"{k:<16}{len(v):>7}" for k, v in rep.items()]
    if rep["mismatched"]:
        lines.append("shape mismatch (name: source vs target):")
        lines += [f"  {k}: {a} vs {b}" for k, a, b in rep["mismatched"]]
    for key in ("missing", "unused"):
        if rep[key]:
            lines.append(f"{key}: " + ", ".join(rep[key][:20]) + (" ..." if len(rep[key]) > 20 else ""))
    return "\n".join(lines)


def _infer_nc(sd: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Class count from the detection head (``model.<last>.anchors`` and ``.m.0.weight``)."""
    idx = [int(k.split(".")[1]) for k in sd if k.startswith("model.") and k.split(".")[1].isdigit()]
    if not idx:
        return None
    last = f"model.{max(idx)}"
    w, a = sd.get(f"{last}.m.0.weight"), sd.get(f"{last}.anchors")
    if w is None or a is None or a.dim() < 2:
        return None
    return int(w.shape[0] // a.shape[-2] - 5)


def convert_yolov7(ckpt: Any, cfg: Union[str, Path, dict, None] = None, nc: Optional[int] = None,
                   partial: bool = False, src: str = "checkpoint") -> tuple[dict[str, Any], dict[str, list]]:
    """Build the project Model for the checkpoint and load its tensors; return (our ckpt, report)."""
    from models.yolo import Model

    sd, yaml_cfg, names = extract_yolov7(ckpt, src)
    if cfg is None:
        if yaml_cfg is None:
            raise ConversionError(f"{src}: the checkpoint carries no model yaml; pass --cfg")
        cfg = yaml_cfg
    if nc is None:
        nc = _infer_nc(sd)
    model = Model(cfg, ch=3, nc=nc)
    rep = match_state_dict(sd, model)
    if (rep["mismatched"] or rep["missing"]) and not partial:
        raise ConversionError(f"{src}: the tensors do not fit the model built from "
                              f"{cfg if not isinstance(cfg, dict) else 'the checkpoint yaml'} "
                              f"({len(rep['mismatched'])} of other shape, {len(rep['missing'])} missing; "
                              f"pass --partial to write the matching part anyway)", format_report(rep))
    model.load_state_dict({k: sd[k] for k in rep["loaded"]}, strict=False)
    nc = int(model.yaml["nc"])
    if not names or len(names) != nc:
        names = [f"class{i}" for i in range(nc)]
    best = ckpt.get("best_fitness") if isinstance(ckpt, Mapping) else None
    try:
        best = float(torch.as_tensor(best).reshape(-1)[0]) if best is not None else 0.0
    except (TypeError, ValueError, IndexError):
        best = 0.0
    out = {"cfg": copy.deepcopy(model.yaml), "nc": nc, "names": [str(n) for n in names],
           "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
           "epoch": -1, "best_fitness": best, "optimizer": None, "fused": False, "format": FORMAT,
           "pretrained": {"converter": "weights/convert_yolov7.py", "source": str(src),
                          "summary": {k: len(v) for k, v in rep.items()}}}
    return out, rep


# --------------------------------------------------------------------------- CLI
def parse_opt(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="official YOLOv7 checkpoint, e.g. yolov7-tiny.pt")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling the source (runs code from the file: trusted files only)")
    p.add_argument("--cfg", default=None, help="model yaml (default: the yaml stored in the checkpoint)")
    p.add_argument("--nc", type=int, default=None, help="number of classes (default: from the checkpoint)")
    p.add_argument("--out", default=None, help="output (default: <src stem>-converted.pt next to it)")
    p.add_argument("--partial", action="store_true", help="write even if some tensors do not fit the model")
    p.add_argument("--verbose", action="store_true", help="show the full traceback of an error")
    return p.parse_args(argv)


def read_source(src: Path, trust_pickle: bool) -> Any:
    """The source checkpoint: plain data when possible, else (only with ``--trust-pickle``) unpickled.

    A damaged file (empty, cut short, random bytes) is reported as such, never as a pickle to trust.
    """
    if not src.is_file():
        fail(f"{src}: file not found" if not src.exists() else f"{src}: not a regular file")
    try:
        return load_checkpoint(src)  # plain data: no pickle trust needed
    except CorruptCheckpointError:
        raise  # "not a readable checkpoint (truncated/corrupt)": --trust-pickle would not help
    except CheckpointError:
        if not trust_pickle:
            raise  # refused: holds pickled objects; the message says how to convert a trusted file
    print(PICKLE_WARNING.format(src=src), file=sys.stderr)
    try:
        return load_trusted_pickle(src)
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001  any unpickling failure: report and stop
        msg = " ".join(str(e).split())[:200]
        fail(f"{src}: {CORRUPT}: unpickling failed ({type(e).__name__}: {msg})")


def _main(argv: Optional[list[str]] = None) -> int:
    opt = parse_opt(argv)
    if opt.nc is not None and opt.nc < 1:
        fail(f"--nc {opt.nc}: must be at least 1")
    src = Path(opt.src)
    out = Path(opt.out) if opt.out else src.with_name(src.stem + "-converted.pt")
    ckpt = read_source(src, opt.trust_pickle)
    try:
        new, rep = convert_yolov7(ckpt, opt.cfg, nc=opt.nc, partial=opt.partial, src=str(src))
    except ConversionError as e:
        if e.details:
            print(e.details)
        raise
    print(format_report(rep))
    save_checkpoint(new, out)  # atomic: a failed write keeps any old file and names the path
    print(f"wrote {out} ({len(new['state_dict'])} tensors, nc={new['nc']}, training checkpoint format)")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry: one ``convert_yolov7.py: error: ...`` line and exit 2 for a bad source or flag."""
    return run_cli(_main, argv, prog="convert_yolov7.py")


if __name__ == "__main__":
    sys.exit(main())
