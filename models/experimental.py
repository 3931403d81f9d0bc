"""Loading models from project checkpoints, and building the fused-checkpoint dict.

Checkpoint formats (docs/DESIGN.md):
- training: ``cfg`` (model yaml dict), ``state_dict``, ``ema``, ``names``, ``nc``, ``fused: False``, ...
- fused: ``cfg``, ``state_dict`` (of the fused model), ``names``, ``nc``, ``stride``, ``fused: True``.
Every file is read through :func:`utils.checkpoint.load_checkpoint` (``weights_only=True``).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Union

import torch

from models.common import reparameterize_model
from models.yolo import Model
from utils.checkpoint import CheckpointError, float_state_dict, load_checkpoint, model_checkpoint
from utils.log import LOGGER
from utils.names import names_list
from utils.torch_utils import de_parallel


def attempt_load(weights: Union[str, Path], map_location: Union[str, torch.device] = "cpu",
                 fuse: bool = True, verbose: bool = False) -> Model:
    """Build the :class:`Model` stored in a project checkpoint (training or fused) in eval mode.

    A fused checkpoint builds ``Model(cfg)``, fuses it, then loads ``state_dict``. A training
    checkpoint loads ``ema`` when present, else ``state_dict``, and is fused when ``fuse`` is True.
    Sets ``names``, ``nc``, ``stride`` (and ``hyp`` when stored). Errors name the file. The layer table
    and model summary are logged only with ``verbose`` (train.py prints them once; the tools do not).
    """
    path = Path(weights)
    ckpt = load_checkpoint(path, map_location="cpu")
    if not isinstance(ckpt.get("cfg"), dict):
        raise CheckpointError(f"{path}: not a project checkpoint (no 'cfg' model yaml dict); keys: "
                              f"{sorted(ckpt)[:10]}")
    fused = bool(ckpt.get("fused", False))
    sd = ckpt.get("ema") if (not fused and ckpt.get("ema") is not None) else ckpt.get("state_dict")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: no 'state_dict' (or 'ema') tensor dict to load")
    nc = ckpt.get("nc", ckpt["cfg"].get("nc"))
    try:
        model = Model(ckpt["cfg"], nc=nc, verbose=verbose)
    except (ValueError, FileNotFoundError) as e:
        raise CheckpointError(f"{path}: cannot build the model from its 'cfg': {e}") from e
    if fused:
        reparameterize_model(model, inplace=True)  # the fused module layout, then its weights
    missing, unexpected = [], []
    try:
        result = model.load_state_dict(float_state_dict(sd), strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit the model built from its 'cfg': {e}") from e
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model built from its 'cfg' "
                              f"({'fused' if fused else 'unfused'}): missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{'...' if len(unexpected) > 5 else ''}")
    if ckpt.get("names") is not None:
        names = names_list(ckpt["names"])
        if len(names) != model.nc:
            raise CheckpointError(f"{path}: {len(names)} class names for nc={model.nc}")
        model.names = names
    if isinstance(ckpt.get("hyp"), dict):
        model.hyp = dict(ckpt["hyp"])
    if ckpt.get("stride") is not None:
        stride = torch.as_tensor(ckpt["stride"], dtype=torch.float32).flatten()
        if not torch.equal(stride, model.stride.float().cpu()):
            raise CheckpointError(f"{path}: stored stride {stride.tolist()} differs from the model's "
                                  f"{model.stride.tolist()}")
    model.eval()
    if fuse and not fused:
        model.fuse(verbose=verbose)
    LOGGER.info(f"Loaded {path} ({'fused' if fused else 'ema' if ckpt.get('ema') is not None else 'state_dict'}, "
                f"nc={model.nc})")
    return model.to(map_location)


def fused_checkpoint(model: torch.nn.Module) -> dict[str, Any]:
    """The fused-checkpoint dict of ``model`` (:func:`utils.checkpoint.model_checkpoint` of a fused float32 copy);
    ``model`` itself is left untouched."""
    m = reparameterize_model(copy.deepcopy(de_parallel(model)).float().eval(), inplace=True)
    return model_checkpoint(m, fused=True)
