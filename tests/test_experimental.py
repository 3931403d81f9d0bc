"""attempt_load / fused_checkpoint: training and fused checkpoints round-trip to the same predictions."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from model_checks import micro_cfg, rel_err

from models.experimental import attempt_load, fused_checkpoint
from models.yolo import Model
from utils.checkpoint import CheckpointError, save_checkpoint

CFG = micro_cfg(nc=3, se_in_stage2=True)
NAMES = ["cat", "dog", "bird"]


def _model(seed: int = 0) -> Model:
    torch.manual_seed(seed)
    m = Model(CFG)
    m.names = list(NAMES)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # well-conditioned random BN statistics
        for b in m.modules():
            if isinstance(b, nn.BatchNorm2d):
                b.running_mean.copy_(torch.randn(b.num_features, generator=g) * 0.2)
                b.running_var.copy_(torch.rand(b.num_features, generator=g) + 0.5)
                b.weight.copy_(torch.rand(b.num_features, generator=g) * 0.4 + 0.1)
    return m


def _train_ckpt(model: Model, ema_model: Model | None = None) -> dict:
    return {"cfg": model.yaml, "state_dict": model.state_dict(),
            "ema": ema_model.half().state_dict() if ema_model is not None else None, "updates": 5,
            "optimizer": None, "epoch": 3, "best_fitness": 0.1, "hyp": {"lr0": 0.01}, "opt": {},
            "names": list(NAMES), "nc": 3, "fused": False}


def _pred(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)[0]


X = torch.rand(1, 3, 64, 96)


def test_training_checkpoint_prefers_ema(tmp_path):
    model, ema = _model(0), _model(1)
    ref_ema = _pred(copy.deepcopy(ema).half().float(), X)
    p = save_checkpoint(_train_ckpt(model, ema), tmp_path / "last.pt")
    m = attempt_load(p, fuse=False)
    assert not m.training and m.names == NAMES and m.nc == 3 and m.stride.tolist() == [8, 16, 32]
    assert m.hyp == {"lr0": 0.01}
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert torch.equal(_pred(m, X), ref_ema)  # fp16 EMA weights loaded as float32
    fused = attempt_load(p)  # fuse=True by default
    assert fused.is_fused()
    assert rel_err(ref_ema, _pred(fused, X)) <= 1e-5


def test_training_checkpoint_without_ema_uses_state_dict(tmp_path):
    model = _model(2)
    p = save_checkpoint(_train_ckpt(model), tmp_path / "best.pt")
    assert torch.equal(_pred(attempt_load(p, fuse=False), X), _pred(copy.deepcopy(model), X))


def test_fused_checkpoint_roundtrip(tmp_path):
    model = _model(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    ck = fused_checkpoint(model)
    # the input model is untouched
    assert model.training == was_training and set(before) == set(model.state_dict())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert ck["fused"] is True and ck["nc"] == 3 and ck["names"] == NAMES and ck["format"]
    assert ck["stride"].tolist() == [8, 16, 32] and isinstance(ck["cfg"], dict)
    assert not any("rbr_" in k or ".bn." in k or "implicit" in k for k in ck["state_dict"])
    p = save_checkpoint(ck, tmp_path / "best-fused.pt")
    raw = torch.load(p, weights_only=True)  # plain data only
    assert raw["fused"] is True
    m = attempt_load(p)
    assert m.is_fused() and m.names == NAMES and not m.training
    ref = _pred(copy.deepcopy(model), X)
    assert rel_err(ref, _pred(m, X)) <= 1e-5
    assert torch.equal(_pred(m, X), _pred(attempt_load(p, fuse=False), X))


def test_errors_name_the_file(tmp_path):
    p = tmp_path / "pickled.pt"
    torch.save({"model": nn.Linear(2, 2)}, p)  # a whole pickled module, like official YOLOv7 files
    with pytest.raises(CheckpointError, match="pickled.pt"):
        attempt_load(p)
    q = save_checkpoint({"state_dict": {}}, tmp_path / "nocfg.pt")
    with pytest.raises(CheckpointError, match="nocfg.pt.*cfg"):
        attempt_load(q)
    ck = _train_ckpt(_model(0))
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if "model.2." not in k}
    r = save_checkpoint(ck, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="partial.pt.*missing"):
        attempt_load(r)
    ck = _train_ckpt(_model(0))
    ck["names"] = ["a"]
    s = save_checkpoint(ck, tmp_path / "names.pt")
    with pytest.raises(CheckpointError, match="names.pt"):
        attempt_load(s)
    with pytest.raises(CheckpointError, match="absent.pt"):
        attempt_load(tmp_path / "absent.pt")
