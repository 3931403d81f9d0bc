"""utils/checkpoint.py: atomic save, plain-data load, refusal of pickled objects."""
import os
import stat

import pytest
import torch

from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


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

    with pytest.raises(Exception):
        save_checkpoint({"epoch": 2, "bad": Unsaveable()}, p)
    assert load_checkpoint(p)["epoch"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]


def test_missing_and_non_dict_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save(torch.ones(2), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="t.pt"):
        load_checkpoint(tmp_path / "t.pt")
