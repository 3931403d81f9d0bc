"""Import Apple's ImageNet MobileOne weights into the backbone of a yolov7-*-ms* model.

Apple's classifier (github.com/apple/ml-mobileone) names its layers ``stage0.*`` (one
MobileOneBlock), ``stage1.<j>.*`` .. ``stage4.<j>.*`` (nn.Sequential of depthwise and
pointwise MobileOneBlocks) and ``linear.*`` (the ImageNet classifier, ignored here). In our
yaml the backbone is one MobileOneBlock layer followed by MobileOne layers whose blocks live
in ``.stage``, so

    stage0.<rest>      -> model.<i0>.<rest>         (first MobileOneBlock of the backbone)
    stage<n>.<j>.<rest> -> model.<in>.stage.<j>.<rest>   (n-th MobileOne layer of the backbone)

A stage is imported as a whole or not at all: every source tensor of the stage must land on
a target tensor of the same shape, and every target tensor of the layer must have a source.
A partly loaded stage would compute neither Apple's features nor a clean initialisation, so
a stage that fails the check is reported and left exactly at its initialisation.

Apple trains with BatchNorm eps=1e-5, the project uses YOLOv7's 1e-3. BatchNorm in eval mode
computes ``(x - mean) / sqrt(var + eps) * w + b``; keeping ``mean``, ``var`` and ``b`` and
rescaling ``w`` by ``sqrt(var + eps_dst) / sqrt(var + eps_src)`` gives the same output under
the new eps. (In train mode batch statistics are used and eps barely matters.)

Every variant has a yaml whose backbone is Apple's exactly, so all of its tensors load:
S0 -> yolov7-tiny-ms0-full.yaml (yolov7-tiny-ms0.yaml narrows stage 4 to 512: stages 0-3 load),
S1..S4 -> yolov7-tiny-ms1.yaml .. yolov7-tiny-ms4.yaml. Without ``--cfg`` the variant is told from
the source's stage widths and its yaml is used.

Usage::

    python weights/convert_mobileone.py --src mobileone_s2_unfused.pth.tar \\
        [--cfg cfg/training/yolov7-tiny-ms2.yaml] [--out weights/yolov7-tiny-ms2-backbone.pt]
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from utils.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint

APPLE_BN_EPS = 1e-5
ROOT = Path(__file__).resolve().parents[1]

#: Apple's variants (``mobileone(variant=...)``): stage0..stage4 output channels and the yaml whose
#: backbone matches them tensor for tensor.
APPLE_VARIANTS: dict[str, tuple[tuple[int, ...], str]] = {
    "s0": ((48, 48, 128, 256, 1024), "yolov7-tiny-ms0-full.yaml"),
    "s1": ((64, 96, 192, 512, 1280), "yolov7-tiny-ms1.yaml"),
    "s2": ((64, 96, 256, 640, 2048), "yolov7-tiny-ms2.yaml"),
    "s3": ((64, 128, 320, 768, 2048), "yolov7-tiny-ms3.yaml"),
    "s4": ((64, 192, 448, 896, 2048), "yolov7-tiny-ms4.yaml"),
}
_STAGE_RE = re.compile(r"^stage(\d+)\.(.+)$")
_BLOCK_RE = re.compile(r"^(\d+)\.(.+)$")


class ConversionError(RuntimeError):
    """The source cannot be imported into the requested target (message says why)."""


# --------------------------------------------------------------------------- source
def extract_state_dict(obj: Any, src: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the tensor dict inside ``obj``: a plain state dict, or one wrapped in
    ``state_dict`` / ``model`` (nested wrappers allowed), with any ``module.`` prefix
    (DataParallel / DDP) removed."""
    seen = 0
    while isinstance(obj, Mapping) and seen < 4:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            break
        seen += 1
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(f"{src}: no state dict found (expected a dict of tensors, "
                              f"optionally under 'state_dict' or 'model')")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{src}: not a state dict: entries {bad[:5]} are not tensors "
                              f"(top-level keys: {list(obj)[:8]})")
    out = {}
    for k, v in obj.items():
        k = str(k)
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def is_fused_apple(sd: Mapping[str, torch.Tensor]) -> bool:
    """True for Apple's deploy checkpoints (``mobileone_s*.pth.tar``): re-parameterized
    blocks hold one ``reparam_conv`` instead of ``rbr_conv`` / ``rbr_scale`` / ``rbr_skip``."""
    return any(".reparam_conv." in k for k in sd) and not any(".rbr_" in k for k in sd)


def load_apple_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Read Apple's ``.pth.tar`` (a plain dict of tensors) without running pickled code."""
    return extract_state_dict(load_checkpoint(path), str(path))


def stage_widths(sd: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """Output channels of Apple's stage0, stage1, ... read from the shapes of an Apple state dict."""
    last: dict[int, tuple[int, int]] = {}  # stage -> (block index, out channels)
    for k, v in sd.items():
        m = re.match(r"^stage(\d+)\.(?:(\d+)\.)?(?:rbr_conv\.0\.conv|reparam_conv)\.weight$", k)
        if m and v.dim() == 4:
            n, j = int(m.group(1)), int(m.group(2) or 0)
            if n not in last or j > last[n][0]:
                last[n] = (j, int(v.shape[0]))
    return tuple(last[n][1] for n in sorted(last))


def detect_variant(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Apple's variant name (``s0`` .. ``s4``) whose stage widths ``sd`` has, else None."""
    widths = stage_widths(sd)
    return next((v for v, (w, _) in APPLE_VARIANTS.items() if w == widths), None)


# --------------------------------------------------------------------------- target
def backbone_layers(model: nn.Module) -> dict[int, int]:
    """Map Apple stage number -> layer index of ``model.model``.

    Stage 0 is the first MobileOneBlock layer of the yaml backbone, stages 1.. are the
    MobileOne layers of the backbone in order.
    """
    from models.common import MobileOneBlock, MobileOneStage

    yaml_dict = getattr(model, "yaml", None)
    n_backbone = len(yaml_dict.get("backbone", [])) if isinstance(yaml_dict, dict) else len(model.model)
    stages: dict[int, int] = {}
    n = 1
    for i, m in enumerate(list(model.model)[:n_backbone]):
        if isinstance(m, MobileOneBlock) and 0 not in stages and n == 1:
            stages[0] = i
        elif isinstance(m, MobileOneStage):
            stages[n] = i
            n += 1
    if not stages:
        raise ConversionError("the model's backbone has no MobileOneBlock / MobileOne layers: "
                              "use a MobileOne cfg such as cfg/training/yolov7-tiny-ms0.yaml")
    return stages


def _target_key(src_key: str, stages: Mapping[int, int]) -> Optional[tuple[int, str]]:
    """(stage, target key) for an Apple key, or None when it has no place in the backbone."""
    m = _STAGE_RE.match(src_key)
    if not m:
        return None
    n, rest = int(m.group(1)), m.group(2)
    if n not in stages:
        return None
    if n == 0:
        return 0, f"model.{stages[0]}.{rest}"
    b = _BLOCK_RE.match(rest)
    if not b:
        return None
    return n, f"model.{stages[n]}.stage.{b.group(1)}.{b.group(2)}"


# --------------------------------------------------------------------------- report
@dataclass
class StageReport:
    stage: int
    layer: int
    tensors: int
    loaded: bool
    reason: str = ""


@dataclass
class ConversionReport:
    """What happened to every tensor; lists of names so callers and tests can check."""

    loaded: list[str] = field(default_factory=list)                 # target keys written
    mismatched: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)  # src, dst, src shape, dst shape
    skipped: list[str] = field(default_factory=list)                # src keys of a stage left at init
    missing: list[str] = field(default_factory=list)                # target keys with no source tensor
    unused: list[str] = field(default_factory=list)                 # src keys with no place in the target
    stages: list[StageReport] = field(default_factory=list)
    bn_compensated: list[str] = field(default_factory=list)         # target BN weights rescaled for eps

    def summary(self) -> dict[str, int]:
        return {"loaded": len(self.loaded), "shape mismatch": len(self.mismatched),
                "skipped (stage not loaded)": len(self.skipped), "missing": len(self.missing),
                "unused": len(self.unused)}

    def as_dict(self) -> dict[str, Any]:
        """Plain data (lists/str/int) for storing inside a checkpoint."""
        return {"summary": self.summary(),
                "mismatched": [[s, d, list(a), list(b)] for s, d, a, b in self.mismatched],
                "missing": list(self.missing),
                "stages": [[s.stage, s.layer, s.tensors, s.loaded, s.reason] for s in self.stages]}

    def table(self) -> str:
        """Human-readable report: per-stage status, counts, names of problem tensors."""
        lines = [f"{'apple stage':<12}{'layer':>6}{'tensors':>9}  status"]
        for s in self.stages:
            status = "loaded" if s.loaded else f"NOT loaded, left at init: {s.reason}"
            lines.append(f"{'stage' + str(s.stage):<12}{s.layer:>6}{s.tensors:>9}  {status}")
        lines.append("")
        lines.append(f"{'tensors':<28}{'count':>7}")
        for k, v in self.summary().items():
            lines.append(f"{k:<28}{v:>7}")
        if self.bn_compensated:
            lines.append(f"{'BN eps compensated':<28}{len(self.bn_compensated):>7}")
        if self.mismatched:
            lines.append("\nshape mismatch (source -> target: source shape vs target shape):")
            lines += [f"  {s} -> {d}: {tuple(a)} vs {tuple(b)}" for s, d, a, b in self.mismatched]
        if self.missing:
            lines.append("\nmissing (target tensors with no source):")
            lines += [f"  {k}" for k in self.missing[:50]]
            if len(self.missing) > 50:
                lines.append(f"  ... and {len(self.missing) - 50} more")
        if self.unused:
            heads = sorted({k.split(".")[0] for k in self.unused})
            lines.append(f"\nunused source tensors: {len(self.unused)} under {', '.join(heads)}"
                         + (" (linear.* is Apple's ImageNet classifier)" if "linear" in heads else ""))
        return "\n".join(lines)


# --------------------------------------------------------------------------- mapping
def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def map_apple_state_dict(apple_sd: Mapping[str, torch.Tensor], model: nn.Module,
                         src_eps: float = APPLE_BN_EPS) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map Apple's tensors onto ``model``'s backbone names; returns (tensors, report).

    Tensors come back float32 (counters int64); BatchNorm weights are rescaled for the
    target BatchNorm's eps. ``model`` is not modified.
    """
    stages = backbone_layers(model)
    target_sd = model.state_dict()
    modules = dict(model.named_modules())
    report = ConversionReport()

    by_stage: dict[int, list[tuple[str, str]]] = {n: [] for n in stages}
    for k in apple_sd:
        t = _target_key(k, stages)
        if t is None:
            report.unused.append(k)
        else:
            by_stage[t[0]].append((k, t[1]))

    out: dict[str, torch.Tensor] = {}
    for n in sorted(stages):
        layer = stages[n]
        pairs = by_stage[n]
        prefix = f"model.{layer}."
        layer_keys = [k for k in target_sd if k.startswith(prefix)]
        mapped = {dst for _, dst in pairs}
        reasons = []
        unknown = [s for s, d in pairs if d not in target_sd]
        mism = [(s, d, tuple(apple_sd[s].shape), tuple(target_sd[d].shape))
                for s, d in pairs if d in target_sd and apple_sd[s].shape != target_sd[d].shape]
        missing = [k for k in layer_keys if k not in mapped and not _is_counter(k)]
        report.mismatched += mism
        report.missing += missing
        if not pairs:
            reasons.append("no source tensors")
        if mism:
            reasons.append(f"{len(mism)} shape mismatch")
        if missing:
            reasons.append(f"{len(missing)} target tensors without source")
        if unknown:
            reasons.append(f"{len(unknown)} source tensors without target (e.g. {unknown[0]})")
        ok = not reasons
        report.stages.append(StageReport(n, layer, len(pairs), ok, "; ".join(reasons)))
        if not ok:
            report.unused += unknown
            report.skipped += [s for s, d in pairs if s not in unknown and s not in {m[0] for m in mism}]
            continue
        for s, d in pairs:
            out[d] = _convert_tensor(apple_sd, s, d, target_sd[d], modules, src_eps, report)
            report.loaded.append(d)
    return out, report


def _convert_tensor(apple_sd, src: str, dst: str, like: torch.Tensor, modules: Mapping[str, nn.Module],
                    src_eps: float, report: ConversionReport) -> torch.Tensor:
    """One tensor in the target dtype; BatchNorm weights rescaled for the eps change."""
    t = apple_sd[src]
    mod_name, _, leaf = dst.rpartition(".")
    mod = modules.get(mod_name)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm) and leaf == "weight" and mod.eps != src_eps:
        var_key = src.rpartition(".")[0] + ".running_var"
        if var_key not in apple_sd:
            raise ConversionError(f"{src}: BatchNorm weight without {var_key}: cannot compensate eps")
        var = apple_sd[var_key].double()
        w = t.double() * torch.sqrt(var + mod.eps) / torch.sqrt(var + src_eps)
        report.bn_compensated.append(dst)
        return w.to(like.dtype).contiguous()
    return t.detach().to(like.dtype).clone().contiguous()


# --------------------------------------------------------------------------- whole job
def build_model(cfg: Union[str, Path, dict], nc: Optional[int] = None) -> nn.Module:
    from models.yolo import Model

    return Model(cfg, ch=3, nc=nc)


def convert_mobileone(apple_sd: Mapping[str, torch.Tensor], cfg: Union[str, Path, dict, None] = None,
                      nc: Optional[int] = None, fused: bool = False, src_eps: float = APPLE_BN_EPS,
                      names: Optional[list[str]] = None, src_name: str = "",
                      model: Optional[nn.Module] = None) -> tuple[dict[str, Any], ConversionReport, nn.Module]:
    """Build the model of ``cfg``, import Apple's backbone tensors; return (checkpoint, report, model).

    Unfused source: the training checkpoint format with the imported backbone tensors in
    ``state_dict`` (train.py --weights loads every key whose name and shape match); with
    ``fused=True`` the model is fused after loading and a fused checkpoint (whole model
    state) is returned. A fused (deploy) source only fills a fused target. A ready, unfused
    ``model`` may be passed instead of ``cfg`` (it is modified in place; ``nc`` is then its own).
    """
    apple_sd = dict(apple_sd)
    src_fused = is_fused_apple(apple_sd)
    if src_fused and not fused:
        raise ConversionError(
            f"{src_name or 'source'} is a fused (deploy) MobileOne checkpoint: its blocks hold one "
            f"'reparam_conv' each, which cannot fill the train-time branches (rbr_conv / rbr_scale / "
            f"rbr_skip) of a trainable model. Use Apple's *_unfused.pth.tar for training, or pass "
            f"--fused to build a fused (inference-only) model from it.")
    if model is None:
        if cfg is None:
            raise ConversionError("convert_mobileone needs a cfg or a model")
        model = build_model(cfg, nc)
    else:
        nc = None
    model.eval()
    if src_fused:
        model.fuse()
    tensors, report = map_apple_state_dict(apple_sd, model, src_eps=src_eps)
    if not report.loaded:
        raise ConversionError(f"{src_name or 'source'}: no stage could be imported:\n{report.table()}")
    nc = int(model.yaml["nc"]) if nc is None else int(nc)
    names = list(names) if names else [f"class{i}" for i in range(nc)]
    meta = {"converter": "weights/convert_mobileone.py", "source": str(src_name),
            "src_bn_eps": src_eps, "report": report.as_dict()}
    if fused:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        assert not unexpected, unexpected
        if not src_fused:
            model.fuse()
        ckpt = {"cfg": copy.deepcopy(model.yaml), "nc": nc, "names": names,
                "stride": model.stride.detach().clone() if torch.is_tensor(model.stride) else model.stride,
                "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "fused": True, "format": FORMAT, "pretrained": meta}
    else:
        model.load_state_dict(tensors, strict=False)
        ckpt = {"cfg": copy.deepcopy(model.yaml), "nc": nc, "names": names,
                "state_dict": tensors, "epoch": -1, "best_fitness": 0.0, "optimizer": None,
                "fused": False, "format": FORMAT, "pretrained": meta}
    return ckpt, report, model


def parse_opt(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="Apple checkpoint, e.g. mobileone_s0_unfused.pth.tar")
    p.add_argument("--cfg", default=None,
                   help="model yaml (default: the yaml matching the source's variant, e.g. yolov7-tiny-ms2.yaml)")
    p.add_argument("--out", default=None, help="output checkpoint (default: weights/<cfg name>-backbone.pt)")
    p.add_argument("--nc", type=int, default=None, help="number of classes (default: the yaml's nc)")
    p.add_argument("--fused", action="store_true",
                   help="build the model fused (inference only); required for Apple's fused checkpoints")
    p.add_argument("--src-eps", type=float, default=APPLE_BN_EPS, help="BatchNorm eps the source was trained with")
    return p.parse_args(argv)


def default_cfg(apple_sd: Mapping[str, torch.Tensor], src: str) -> str:
    """The yaml of the source's variant (told from its stage widths)."""
    variant = detect_variant(apple_sd)
    if variant is None:
        raise ConversionError(f"{src}: stage widths {stage_widths(apple_sd)} are none of Apple's S0-S4 "
                              f"({', '.join(f'{v}: {w}' for v, (w, _) in APPLE_VARIANTS.items())}); pass --cfg")
    return str(ROOT / "cfg" / "training" / APPLE_VARIANTS[variant][1])


def main(argv: Optional[list[str]] = None) -> int:
    opt = parse_opt(argv)
    try:
        apple_sd = load_apple_state_dict(opt.src)
        cfg = opt.cfg or default_cfg(apple_sd, opt.src)
        ckpt, report, _ = convert_mobileone(apple_sd, cfg, nc=opt.nc, fused=opt.fused,
                                            src_eps=opt.src_eps, src_name=opt.src)
    except (CheckpointError, ConversionError, FileNotFoundError, ValueError) as e:
        print(f"convert_mobileone: error: {e}", file=sys.stderr)
        return 2
    variant = detect_variant(apple_sd)
    opt.out = opt.out or f"weights/{Path(cfg).stem}{'-fused' if opt.fused else '-backbone'}.pt"
    print(f"{opt.src} (MobileOne-{variant.upper() if variant else '?'}) -> {cfg}" + (" (fused)" if opt.fused else ""))
    print(report.table())
    save_checkpoint(ckpt, opt.out)
    print(f"\nwrote {opt.out} ({len(ckpt['state_dict'])} tensors, "
          f"{'fused' if ckpt['fused'] else 'training'} checkpoint format)")
    if not opt.fused:
        print(f"train with: python train.py --weights {opt.out} --cfg {cfg} --data DATA.yaml")
    return 0


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main, prog="convert_mobileone.py"))
