"""Convert an official YOLOv7 ``.pt`` (a pickled ``Model`` module) into the project's format.

Official YOLOv7 checkpoints store whole Python objects: loading them means unpickling, and
unpickling can run arbitrary code chosen by whoever made the file. Every loader of this
project therefore uses ``torch.load(weights_only=True)`` and refuses such files. This
script is the one, explicit exception: with ``--trust-pickle`` it unpickles the file
(``weights_only=False``), takes the ``ema`` module when present, else ``model`` (as
YOLOv7's own ``attempt_load`` does), and writes a plain tensors-and-data training checkpoint
that every project tool loads safely.

YOLOv7's own classes (``models.*``, ``utils.*``) are not imported from this project while
unpickling: they are replaced by plain ``nn.Module`` shells, so only the stored state
(parameters, buffers, ``yaml``, ``names``) is read, and files from any YOLOv7 revision work.

Usage::

    python weights/convert_yolov7.py --src yolov7-tiny.pt --trust-pickle \\
        [--cfg cfg/training/yolov7-tiny.yaml] --out weights/yolov7-tiny-converted.pt
"""
from __future__ import annotations

import argparse
import copy
import pickle
import sys
import types
from pathlib import Path
from typing import Any, Mapping, Optional, Union

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from utils.checkpoint import CORRUPT, FORMAT, CheckpointError, CorruptCheckpointError, load_checkpoint, save_checkpoint
from utils.cli import fail, run_cli

PICKLE_WARNING = """\
WARNING: --trust-pickle: {src} is about to be unpickled with torch.load(weights_only=False).
  Unpickling runs whatever code the file's author put in it, with your user's rights (read or
  delete files, steal credentials, install malware). Only continue with files you obtained from
  a source you trust (e.g. the official YOLOv7 release page) and whose checksum you checked.
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


class _ShellUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in _YOLOV7_PACKAGES:
            return _shell_class(module, name)
        return super().find_class(module, name)


def _shell_pickle_module() -> types.ModuleType:
    mod = types.ModuleType("yolov7_shell_pickle")
    mod.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
    mod.Unpickler = _ShellUnpickler
    mod.load = lambda f, **kw: _ShellUnpickler(f, **kw).load()
    return mod


def load_trusted_pickle(path: Union[str, Path]) -> Any:
    """Unpickle ``path`` (RUNS CODE FROM THE FILE). Only for ``--trust-pickle``."""
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_shell_pickle_module())


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
