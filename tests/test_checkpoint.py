"""utils/checkpoint.py: atomic save (full disk included), damaged vs pickled files, non-finite check, stripping."""
import errno
import os
import pickle
import stat

import pytest
import torch

import utils.atomic
from utils.atomic import WriteError
from utils.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    PickledCheckpointError,
    load_checkpoint,
    nonfinite_tensors,
    save_checkpoint,
    strip_optimizer,
)


def test_round_trip_sets_format_and_permissions(tmp_path):
    p = save_checkpoint({"state_dict": {"w": torch.arange(3.0)}, "epoch": 2}, tmp_path / "sub" / "last.pt")
    ck = load_checkpoint(p)
    assert ck["epoch"] == 2 and torch.equal(ck["state_dict"]["w"], torch.arange(3.0))
    assert ck["format"].startswith("moyolo-ckpt")
    assert stat.S_IMODE(os.stat(p).st_mode) & 0o044  # readable by others (not mkstemp's 0600)
    assert [f.name for f in p.parent.iterdir()] == ["last.pt"]  # no temp file left behind


def test_failed_save_keeps_previous_file(tmp_path):
    p = save_checkpoint({"epoch": 1}, tmp_path / "last.pt")

    class Unsaveable:  # torch.save cannot pickle a local class: the write fails midway
        pass

    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_checkpoint({"epoch": 2, "bad": Unsaveable()}, p)
    assert load_checkpoint(p)["epoch"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]


def test_missing_and_non_dict_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save(torch.ones(2), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="t.pt"):
        load_checkpoint(tmp_path / "t.pt")


# --------------------------------------------------------------------------- full disk, damaged files


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes, as the kernel's would."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        self.room -= len(b)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


@pytest.mark.parametrize("room", [0, 100, 5000])
def test_full_disk_keeps_previous_file_and_names_path(tmp_path, monkeypatch, room):
    p = save_checkpoint({"epoch": 1, "w": torch.arange(10.0)}, tmp_path / "last.pt")
    before = p.read_bytes()
    monkeypatch.setattr(utils.atomic, "open", lambda *a, **k: _FullDisk(open(*a, **k), room), raising=False)
    with pytest.raises(WriteError) as e:
        save_checkpoint({"epoch": 2, "w": torch.randn(100_000)}, p)
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(p)
    assert "No space left on device" in str(e.value)
    assert p.read_bytes() == before and load_checkpoint(p)["epoch"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_damaged_files_are_called_corrupt_not_pickled(tmp_path):
    good = save_checkpoint({"w": torch.randn(5000), "epoch": 3}, tmp_path / "good.pt").read_bytes()
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.randn(5000)}, legacy, _use_new_zipfile_serialization=False)
    flipped = bytearray(good)
    flipped[len(good) // 2:len(good) // 2 + 64] = bytes(64)
    cases = {
        "zero.pt": (b"", "empty (0 bytes)"),
        "half.pt": (good[:len(good) // 2], "central directory"),
        "tail.pt": (good[:-10], "central directory"),
        "flipped.pt": (bytes(flipped), "fails its CRC check"),
        "random.pt": (torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                    dtype=torch.uint8).numpy().tobytes(), "truncated/corrupt"),
        "text.pt": (b"hello world\n" * 10, "truncated/corrupt"),
        "legacy_cut.pt": (legacy.read_bytes()[:len(legacy.read_bytes()) // 2], "truncated/corrupt"),
        "legacy_head.pt": (legacy.read_bytes()[:40], "truncated/corrupt"),
    }
    for name, (data, what) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CorruptCheckpointError) as e:
            load_checkpoint(tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / name}: not a readable checkpoint (truncated/corrupt)"), msg
        assert what in msg and "pickle" not in msg.replace("pickle stream", "") and "--trust-pickle" not in msg


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_refused_with_the_converter_hint(tmp_path):
    files = [tmp_path / "zip.pt", tmp_path / "legacy.pt", tmp_path / "raw.pt"]
    torch.save({"m": _Payload()}, files[0])
    torch.save({"m": _Payload()}, files[1], _use_new_zipfile_serialization=False)
    with open(files[2], "wb") as f:
        pickle.dump({"m": _Payload()}, f)
    for p in files:
        with pytest.raises(PickledCheckpointError) as e:
            load_checkpoint(p)
        assert "refused to load" in str(e.value) and "getcwd" in str(e.value) and "--trust-pickle" in str(e.value)


def test_alias_bomb_is_refused(tmp_path):
    x: list = [0]
    for _ in range(30):
        x = [x, x]  # 2**30 items when walked naively, 60 objects in memory and on disk
    p = save_checkpoint({"cfg": {"backbone": x}}, tmp_path / "bomb.pt")
    with pytest.raises(CorruptCheckpointError, match="expands to more than"):
        load_checkpoint(p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_tensors_finds_one_bad_element_anywhere(dtype, value):
    """The fused per-dtype check sees a single NaN/inf at the start, middle or end of large and strided tensors,
    among finite tensors of other dtypes, and does not flag huge finite values."""
    for n, pos in ((1, 0), (4097, 0), (100_003, 50_001), (1 << 20, (1 << 20) - 1)):
        bad = torch.randn(n, dtype=torch.float32).to(dtype)
        bad[pos] = value
        strided = torch.randn(64, 33).to(dtype).t()  # not contiguous
        strided[pos % 33, 7] = value
        ok = {"big": torch.full((1000,), 3e38), "h": torch.ones(9, dtype=torch.float16), "i": torch.arange(5)}
        found = nonfinite_tensors({"ok": ok, "bad": bad, "strided": strided, "x": torch.zeros(3, dtype=dtype)})
        assert found == ["bad", "strided"], (n, pos, found)


def test_nonfinite_tensors_names_nested_entries(tmp_path):
    ck = {"state_dict": {"a.w": torch.ones(3), "b.w": torch.tensor([1.0, float("nan")])},
          "ema": {"b.w": torch.tensor([float("inf")]), "n": torch.tensor([5])},
          "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("-inf")])}}, "param_groups": [{"lr": 0.1}]},
          "hist": [torch.zeros(2), torch.full((2,), float("nan"))], "best_fitness": float("nan"),
          "half": torch.tensor([1.0], dtype=torch.float16), "empty": torch.zeros(0)}
    assert sorted(nonfinite_tensors(ck)) == sorted(["state_dict.b.w", "ema.b.w", "optimizer.state.0.exp_avg",
                                                    "hist.1", "best_fitness"])
    assert nonfinite_tensors({"w": torch.ones(2)}) == []
    p = save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="not saved: non-finite values in state_dict.b.w"):
        save_checkpoint(ck, p, require_finite=True)
    assert load_checkpoint(p)["epoch"] == 1


# --------------------------------------------------------------------------- strip_optimizer
CFG = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0,
       "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
       "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [32, 3, 2]], [-1, 1, "Conv", [64, 3, 2]],
                    [-1, 1, "Conv", [64, 3, 2]]],
       "head": [[-1, 1, "Conv", [64, 3, 1]], [[2, 4], 1, "IDetect", ["nc", "anchors"]]]}


def _training_checkpoint():
    from models.yolo import Model
    torch.manual_seed(0)
    model = Model(CFG)
    ema = {k: v.detach().clone() + (0.01 if v.is_floating_point() else 0) for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    sd = opt.state_dict()
    return model, {"cfg": CFG, "state_dict": model.state_dict(), "ema": ema, "updates": 7, "optimizer": sd,
                   "epoch": 9, "best_fitness": 0.5, "hyp": {"lr0": 0.01}, "opt": {"epochs": 10},
                   "names": ["a", "b"], "nc": 2, "fused": False}


def test_strip_optimizer_shrinks_and_loads_as_fp32(tmp_path):
    from models.experimental import attempt_load
    model, ck = _training_checkpoint()
    full = save_checkpoint(ck, tmp_path / "last.pt")
    size0 = full.stat().st_size
    out = strip_optimizer(full, tmp_path / "best.pt")
    assert out == tmp_path / "best.pt" and out.stat().st_size < size0 / 5  # 4 fp32 copies -> 1 fp16 copy
    s = torch.load(out, weights_only=True)
    assert s["optimizer"] is None and s["ema"] is None and s["updates"] is None and s["stripped"] is True
    assert s["epoch"] == 9 and s["opt"] == {"epochs": 10} and s["hyp"] == {"lr0": 0.01} and s["names"] == ["a", "b"]
    assert s["cfg"] == CFG and s["nc"] == 2 and s["best_fitness"] == 0.5
    w = s["state_dict"]
    assert all(v.dtype == torch.float16 for v in w.values() if v.is_floating_point())
    assert w["model.0.bn.num_batches_tracked"].dtype == torch.int64
    for k, v in ck["ema"].items():  # the EMA weights, rounded to fp16
        if v.is_floating_point():
            torch.testing.assert_close(w[k].float(), v.half().float())
    m = attempt_load(out, fuse=False)
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert all(b.dtype == torch.float32 for b in m.buffers() if b.is_floating_point())
    strip_optimizer(full)  # in place
    assert full.stat().st_size == out.stat().st_size and sorted(p.name for p in tmp_path.iterdir()) == \
        ["best.pt", "last.pt"]


def test_strip_keeps_values_fp16_cannot_hold(tmp_path):
    ck = {"state_dict": {"big": torch.tensor([1e6, 1.0]), "small": torch.tensor([0.5])}, "cfg": CFG}
    p = strip_optimizer(save_checkpoint(ck, tmp_path / "x.pt"))
    s = load_checkpoint(p)["state_dict"]
    assert s["big"].dtype == torch.float32 and s["small"].dtype == torch.float16
    fused = save_checkpoint({"fused": True, "state_dict": {}}, tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match="fused"):
        strip_optimizer(fused)
