"""Checkpoint files, the one owner of their format: plain dicts of tensors and data, written atomically, read
without pickle code.

What a file holds is built here too: :func:`training_checkpoint` (train.py's last.pt / best.pt: model, EMA,
optimizer, epoch, hyp, opt), :func:`model_checkpoint` (weights only, e.g. a fused model), both stamped with
:data:`FORMAT`; :func:`float_state_dict` widens stored weights before loading.

Every loader in the project goes through :func:`load_checkpoint`, which uses
``torch.load(..., weights_only=True)``: a file holding pickled objects (e.g. an official
YOLOv7 ``.pt`` with whole modules, or a malicious file) is refused with a clear error
instead of running code. A file that is merely damaged (empty, cut short, random bytes, a
zip member failing its CRC) is reported as such, not as a pickle refusal.

:func:`save_checkpoint` writes through :mod:`utils.atomic`: the previous file stays intact until
the new one is complete, and a full disk ends in a :class:`utils.atomic.WriteError` naming the path.
"""
from __future__ import annotations

import io
import math
import pickletools
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from utils.atomic import WriteError, atomic_write
from utils.cli import UserError

FORMAT = "moyolo-ckpt-1"
ZIP_MAGIC = b"PK\x03\x04"
MAX_PLAIN_ITEMS = 1_000_000  # non-tensor items a checkpoint may expand to (lists/dicts seen through aliases)
FP16_MAX = 65504.0
STRIP_KEYS = ("optimizer", "ema", "updates", "training_results", "wandb_id")  # YOLOv7's strip_optimizer set
CORRUPT = "not a readable checkpoint (truncated/corrupt)"
PathLike = Union[str, Path]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be read safely or lacks what the caller needs."""


class CorruptCheckpointError(CheckpointError):
    """The file is empty, cut short or damaged: not a checkpoint that can be read at all."""


class PickledCheckpointError(CheckpointError):
    """The file holds pickled Python objects (loading it could run code): refused."""


# --------------------------------------------------------------------------- saving
class _WriteRecorder:
    """File wrapper that remembers an OSError raised by ``write`` (torch.save turns it into a vague RuntimeError)."""

    def __init__(self, f):
        self.f = f
        self.error: Optional[OSError] = None

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(ckpt: dict[str, Any], path: PathLike, require_finite: bool = False) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temp file beside it, fsync, rename); returns ``path``.

    A kill or a failure at any point leaves the previous file (or none) and no temp file; a
    write error (e.g. ``No space left on device``) raises :class:`WriteError` naming ``path``.
    ``require_finite``: refuse (CheckpointError, nothing written) when any floating tensor is
    non-finite, so a diverged model never replaces a good checkpoint.
    """
    path = Path(path)
    ckpt = dict(ckpt)
    ckpt.setdefault("format", FORMAT)
    if require_finite:
        bad = nonfinite_tensors(ckpt)
        if bad:
            raise CheckpointError(f"{path}: not saved: non-finite values in {', '.join(bad[:5])}"
                                  f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}")
    with atomic_write(path, "wb") as f:
        rec = _WriteRecorder(f)
        try:
            torch.save(ckpt, rec)
        except RuntimeError as e:
            if rec.error is not None:  # the real cause (ENOSPC, EIO, ...): atomic_write names the path
                raise rec.error from e
            raise
    return path


# --------------------------------------------------------------------------- loading
def _pickle_globals(data: bytes) -> tuple[bool, list[str], int]:
    """Scan one pickle stream: (parsed to STOP, 'module.name' globals it imports, bytes used).

    Names are returned only for a stream that parses completely (random bytes can look like opcodes).
    """
    names: list[str] = []
    strings: list[str] = []
    end = 0
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data)):
            end = pos
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif op.name == "INST":
                names.append(str(arg).replace(" ", "."))
            elif isinstance(arg, str):
                strings.append(arg)
            if op.name == "STOP":
                return True, names, pos + 1
    except Exception:  # noqa: BLE001 - ValueError/EOF/...: not a complete pickle stream
        return False, [], end
    return False, [], end


def _zip_problem(path: Path) -> Optional[str]:
    """Why a torch zip checkpoint is damaged (central directory, CRCs), or None when it is sound."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except zipfile.BadZipFile:
        return "zip archive without a readable central directory (cut short?)"
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError, ValueError) as e:
        return f"zip archive cannot be read ({type(e).__name__}: {e})"
    return f"zip member {bad} fails its CRC check" if bad else None


def _zip_pickle(path: Path) -> bytes:
    """The data.pkl member of a torch zip checkpoint (b'' if there is none)."""
    with zipfile.ZipFile(path) as z:
        member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
        return z.read(member) if member else b""


def pickle_globals(path: Path) -> tuple[bool, list[str]]:
    """(parsed completely, 'module.name' globals) of a checkpoint's pickle, read without unpickling:
    a torch zip archive's data.pkl, or the pickles of the legacy torch format / a plain pickle file."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head == ZIP_MAGIC:
        ok, names, _ = _pickle_globals(_zip_pickle(path))
        return ok, names
    data, ok, names, pos = path.read_bytes()[:64 << 20], True, [], 0
    for _ in range(4):  # magic number, protocol, sys info, the object
        ok, found, used = _pickle_globals(data[pos:])
        names += found
        pos += used
        if not ok or pos >= len(data):
            break
    return ok, names


TORCH_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "__builtin__.set")


def _diagnose(path: Path, exc: BaseException) -> CheckpointError:
    """Turn a failed weights-only load into the error that says what is actually wrong."""
    size = path.stat().st_size
    if size == 0:
        return CorruptCheckpointError(f"{path}: {CORRUPT}: the file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == ZIP_MAGIC:
        problem = _zip_problem(path)
        if problem:
            return CorruptCheckpointError(f"{path}: {CORRUPT}: {problem}")
    ok, names = pickle_globals(path)
    foreign = [n for n in names if not n.startswith(TORCH_GLOBAL_PREFIXES)]
    text = " ".join(str(exc).split())
    if foreign or (ok and "GLOBAL" in text):
        shown = ", ".join(dict.fromkeys(foreign)) if foreign else "Python objects"
        return PickledCheckpointError(
            f"{path}: refused to load: it holds pickled {shown} and loading it could run code (only "
            f"plain tensor/data checkpoints are read). Official YOLOv7 .pt files can be converted with "
            f"'python weights/convert_yolov7.py --src FILE --trust-pickle' if you trust their source.")
    if not ok:
        return CorruptCheckpointError(f"{path}: {CORRUPT}: neither a complete torch zip archive nor a "
                                      f"readable pickle stream")
    return CorruptCheckpointError(f"{path}: {CORRUPT}: {type(exc).__name__}: {text[:200]}")


def _plain_items(obj: Any, limit: int) -> int:
    """How many items ``obj`` expands to when walked naively (aliases counted each time), up to ``limit``."""
    n, stack = 0, [obj]
    while stack:
        x = stack.pop()
        n += 1
        if n > limit:
            return n
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend(x)
    return n


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``.

    Raises :class:`CheckpointError` naming the file when it is missing or not a dict,
    :class:`CorruptCheckpointError` when it is empty, truncated or damaged, and
    :class:`PickledCheckpointError` when it holds pickled objects (code could run on load).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size >= 4:
        with open(path, "rb") as f:
            if f.read(4) == ZIP_MAGIC:
                problem = _zip_problem(path)
                if problem:
                    raise CorruptCheckpointError(f"{path}: {CORRUPT}: {problem}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError...: never fall back to pickle
        raise _diagnose(path, e) from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, found {type(ckpt).__name__}")
    if _plain_items(ckpt, MAX_PLAIN_ITEMS) > MAX_PLAIN_ITEMS:
        raise CorruptCheckpointError(f"{path}: {CORRUPT}: its data expands to more than {MAX_PLAIN_ITEMS} "
                                     f"items (nested aliases?)")
    return ckpt


# --------------------------------------------------------------------------- inspecting and stripping
def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating tensors (and floats) holding NaN/inf anywhere in a nested
    checkpoint/state dict, in traversal order."""
    found: list[tuple[str, Optional[torch.Tensor]]] = []  # (name, tensor to check) or (name, None): a bad float
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [(prefix, obj)]
    while stack:
        name, x = stack.pop()
        if torch.is_tensor(x):
            if x.is_floating_point() and x.numel():
                found.append((name, x))
            continue
        if isinstance(x, float) and not math.isfinite(x):
            found.append((name, None))
            continue
        if not isinstance(x, (dict, list, tuple)) or id(x) in seen:
            continue
        seen.add(id(x))
        items = x.items() if isinstance(x, dict) else enumerate(x)
        stack.extend((f"{name}.{k}" if name else str(k), v) for k, v in reversed(list(items)))
    bad = {id(t) for t in _nonfinite([t for _, t in found if t is not None])}
    return [name for name, t in found if t is None or id(t) in bad]


@torch.no_grad()
def _nonfinite(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The non-empty floating tensors of ``tensors`` holding NaN/inf: one fused max-|x| per dtype and device
    (NaN propagates through it) instead of an ``isfinite`` pass and a host sync per tensor (a training
    checkpoint holds ~3,000 tensors)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    bad = []
    for group in groups.values():
        peaks = torch.stack(torch._foreach_norm(group, float("inf")))
        bad += [group[i] for i in torch.nonzero(~torch.isfinite(peaks)).flatten().tolist()]
    return bad


def _half(sd: dict[str, Any]) -> dict[str, Any]:
    """Floating tensors as fp16 (contiguous, detached), except those fp16 cannot hold (|x| > 65504)."""
    out = {}
    for k, v in sd.items():
        if torch.is_tensor(v) and v.is_floating_point():
            v = v.detach()
            fits = not v.numel() or float(v.abs().max()) <= FP16_MAX
            out[k] = v.half().contiguous() if fits else v.clone()
        else:
            out[k] = v
    return out


def strip_optimizer(src: PathLike, dst: Optional[PathLike] = None) -> Path:
    """Finalise a training checkpoint as YOLOv7's ``strip_optimizer``: smaller, still complete for every tool.

    The EMA weights (when present) become ``state_dict``; optimizer state, the separate EMA copy and
    other training-only state are dropped; floating tensors are stored as fp16 (loaders widen them to
    fp32). ``cfg``, ``names``, ``nc``, ``stride``, ``hyp``, ``opt``, ``epoch`` and ``best_fitness``
    stay, so test/detect/export load it and ``--resume`` can tell the run finished. Written
    atomically to ``dst`` (default: over ``src``); returns the path written.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else src
    ck = load_checkpoint(src)
    if ck.get("fused"):
        raise CheckpointError(f"{src}: a fused (inference) checkpoint has no training state to strip")
    weights = ck.get("ema") if isinstance(ck.get("ema"), dict) and ck.get("ema") else ck.get("state_dict")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{src}: no 'state_dict' (or 'ema') tensor dict to strip")
    ck["state_dict"] = _half(weights)
    for k in STRIP_KEYS:
        ck[k] = None
    ck["stripped"] = True
    return save_checkpoint(ck, dst)


__all__ = ["FORMAT", "CheckpointError", "CorruptCheckpointError", "PickledCheckpointError", "WriteError",
           "load_checkpoint", "nonfinite_tensors", "save_checkpoint", "strip_optimizer"]


# --------------------------------------------------------------------------- what a checkpoint holds
def to_plain(x: Any) -> Any:
    """Options/hyp values as plain yaml/pickle-free data (Path -> str, tuples -> lists, numpy -> python)."""
    if isinstance(x, dict):
        return {str(k): to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)  # Path and anything else a yaml/weights-only file cannot hold as such



def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the state dict, NCHW (a channels-last training run saves plain tensors)."""
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}



def training_checkpoint(model: nn.Module, ema: Any, optimizer: torch.optim.Optimizer, epoch: int,
                        best_fitness: float, hyp: dict, opt: dict, names: Sequence[str]) -> dict[str, Any]:
    """The dict train.py saves as last.pt/best.pt: tensors and plain data only (loads with weights_only=True).

    ``model`` is the bare (not DDP-wrapped) model; ``ema`` a :class:`utils.torch_utils.ModelEMA`.
    """
    sd = optimizer.state_dict()
    sd["param_groups"] = [to_plain(g) for g in sd["param_groups"]]
    return {
        "cfg": to_plain(model.yaml),
        "state_dict": _cpu_state(model),
        "ema": _cpu_state(ema.ema),
        "updates": int(ema.updates),
        "optimizer": sd,
        "epoch": int(epoch),
        "best_fitness": float(best_fitness),
        "hyp": to_plain(hyp),
        "opt": to_plain(opt),
        "names": list(names),
        "nc": len(names),
        "fused": False,
        "format": FORMAT,
    }


def model_checkpoint(model: nn.Module, fused: bool) -> dict[str, Any]:
    """The weights-only checkpoint of ``model`` (a fused model for ``fused``, as export.py and the hub write):
    cfg, CPU state dict, names, nc, stride, ``fused`` and ``format``."""
    return {
        "cfg": to_plain(model.yaml),
        "state_dict": _cpu_state(model),
        "names": list(model.names),
        "nc": int(model.nc),
        "stride": model.stride.detach().cpu().float().clone(),
        "fused": bool(fused),
        "format": FORMAT,
    }


def float_state_dict(sd: dict[str, Any]) -> dict[str, Any]:
    """``sd`` with floating-point tensors as float32 (checkpoints may hold fp16 weights); other
    entries unchanged. The one place checkpoint weights are widened before loading."""
    return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in sd.items()}
