"""Output distillation (utils/distill.py) and train.py --teacher."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from models.yolo import Model
from utils.distill import cell_strides, check_compatible, distillation_loss

ROOT = Path(__file__).resolve().parents[1]
HYP = {"box": 0.05, "obj": 0.2, "cls": 0.1}


@pytest.fixture(autouse=True)
def _keep_project_log_handlers():
    """train.main() in this process adds a stderr handler bound to the test's captured stream; drop it after."""
    from utils.log import LOGGER
    before = list(LOGGER.handlers)
    yield
    LOGGER.handlers[:] = before


def _raw_and_decoded(model: Model, x: torch.Tensor) -> tuple[list, torch.Tensor]:
    model.train()
    raw = model(x)
    return raw, model.model[-1].decode(raw)


def test_decode_of_train_outputs_equals_eval_output():
    torch.manual_seed(0)
    m = Model("cfg/training/yolov7-tiny.yaml", nc=3, verbose=False)
    x = torch.rand(2, 3, 64, 64)
    m.eval()
    with torch.no_grad():
        ref, raw = m(x)
    assert torch.allclose(m.model[-1].decode(raw), ref)


def test_gradient_vanishes_when_the_student_predicts_the_teacher():
    torch.manual_seed(0)
    student = Model("cfg/training/yolov7-tiny.yaml", nc=3, verbose=False)
    x = torch.rand(2, 3, 64, 64)
    raw, decoded = _raw_and_decoded(student, x)
    head = student.model[-1]
    teacher = decoded.detach().clone()
    loss, parts = distillation_loss(raw, decoded, teacher, cell_strides(raw, head.stride), HYP)
    grads = torch.autograd.grad(loss, raw, retain_graph=True)
    assert parts[0] == 0 and max(float(g.abs().max()) for g in grads) < 1e-6
    shifted = teacher.clone()
    shifted[..., 5:] = 1 - shifted[..., 5:]  # other classes: a real signal
    loss, parts = distillation_loss(raw, decoded, shifted, cell_strides(raw, head.stride), HYP)
    assert max(float(g.abs().max()) for g in torch.autograd.grad(loss, raw)) > 1e-4


def test_student_moves_towards_the_teacher():
    torch.manual_seed(0)
    teacher = Model("cfg/training/yolov7-tiny.yaml", nc=2, verbose=False).eval()
    student = Model("cfg/training/yolov7-tiny-ms0.yaml", nc=2, verbose=False)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        target = teacher(x)[0]
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        raw, decoded = _raw_and_decoded(student, x)
        loss, _ = distillation_loss(raw, decoded, target, cell_strides(raw, student.model[-1].stride), HYP)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert min(losses[-3:]) < 0.7 * losses[0], losses


def test_incompatible_teacher_is_refused():
    a = Model("cfg/training/yolov7-tiny.yaml", nc=2, verbose=False).model[-1]
    b = Model("cfg/training/yolov7-tiny.yaml", nc=3, verbose=False).model[-1]
    check_compatible(a, a, "t.pt")
    with pytest.raises(ValueError, match="t.pt: the teacher predicts"):
        check_compatible(a, b, "t.pt")


def _dataset(tmp_path: Path) -> Path:
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(tmp_path / "images" / split / f"{i}.jpg"), rng.integers(0, 255, (64, 64, 3), np.uint8))
            (tmp_path / "labels" / split / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.4 0.4\n")
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "images/train", "val": "images/val",
                                    "nc": 2, "names": ["a", "b"]}))
    return data


def _teacher(path: Path, nc: int) -> Path:
    from utils.checkpoint import save_checkpoint
    m = Model("cfg/training/yolov7-tiny.yaml", nc=nc, verbose=False)
    save_checkpoint({"cfg": m.yaml, "state_dict": m.state_dict(), "ema": None, "nc": nc,
                     "names": [str(i) for i in range(nc)], "fused": False}, path)
    return path


def _args(tmp_path: Path, data: Path, teacher: Path) -> list[str]:
    return ["--cfg", "cfg/training/yolov7-tiny-ms0.yaml", "--data", str(data), "--epochs", "1", "--batch-size", "2",
            "--img-size", "64", "--workers", "0", "--device", "cpu", "--notest", "--noautoanchor",
            "--project", str(tmp_path / "runs"), "--name", "exp", "--teacher", str(teacher)]


def test_train_with_teacher(tmp_path, monkeypatch):
    import train
    import utils.distill
    data = _dataset(tmp_path)
    calls = []
    real = utils.distill.distillation_loss

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(train, "distillation_loss", counted)
    assert train.main(_args(tmp_path, data, _teacher(tmp_path / "teacher.pt", 2))) == 0
    assert len(calls) == 2  # two batches of two images
    assert (tmp_path / "runs" / "exp" / "weights" / "last.pt").is_file()


def test_train_with_wrong_teacher_is_one_line(tmp_path, capsys):
    import train
    data = _dataset(tmp_path)
    rc = train.run_cli(train.main, _args(tmp_path, data, _teacher(tmp_path / "t3.pt", 3)), prog="train.py")
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train.py: error:")]
    assert rc != 0 and len(err) == 1 and "--teacher" in err[0] and "t3.pt" in err[0]
