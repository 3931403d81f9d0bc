"""utils/plots.py: mosaics, label stats, results.png, metric curves, drawing helpers (Agg only)."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch

from utils.plots import (
    colors,
    output_to_target,
    plot_confusion_matrix,
    plot_images,
    plot_labels,
    plot_mc_curve,
    plot_one_box,
    plot_pr_curve,
    plot_results,
)


def test_colors_stable_and_cycling():
    assert colors(3) == colors(3) == colors(3 + colors.n)
    assert colors(0, bgr=True) == tuple(reversed(colors(0)))
    assert len({colors(i) for i in range(colors.n)}) == colors.n


def test_plot_one_box_draws():
    img = np.zeros((100, 120, 3), np.uint8)
    plot_one_box([10, 20, 60, 80], img, color=(0, 255, 0), label="cat 0.9")
    assert img[45:55, 8:13, 1].max() > 200 and img[50, 35].sum() == 0  # outline drawn, inside untouched
    img = np.zeros((100, 120, 3), np.uint8)
    plot_one_box([5, 5, 50, 50], img, color=(255, 0, 0), label="dog")
    assert img[25:35, 3:8, 0].max() > 200


def test_plot_images_labels_and_predictions(tmp_path):
    imgs = torch.randint(0, 255, (5, 3, 64, 96), dtype=torch.uint8)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.4], [3, 0, 0.2, 0.3, 0.1, 0.2]])
    f = tmp_path / "val_batch0_labels.jpg"
    m = plot_images(imgs, targets, [f"/x/im{i}.jpg" for i in range(5)], f, names=["a", "b"])
    assert m.shape == (3 * 64, 3 * 96, 3) and cv2.imread(str(f)).shape == m.shape
    out = [torch.tensor([[10.0, 10, 40, 40, 0.9, 1], [0, 0, 5, 5, 0.1, 0]]), torch.zeros(0, 6)]
    t = output_to_target(out)
    assert t.shape == (2, 7) and t[0].tolist() == pytest.approx([0, 1, 25, 25, 30, 30, 0.9])
    f2 = tmp_path / "val_batch0_pred.jpg"
    plot_images(imgs.float() / 255, t, None, f2, names={0: "a", 1: "b"}, max_size=32)
    assert cv2.imread(str(f2)).shape[:2] == (3 * 21, 3 * 32)


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.integers(0, 3, (50, 1)), rng.uniform(0.1, 0.9, (50, 4))], 1)
    f = plot_labels(labels, ["a", "b", "c"], tmp_path)
    assert f == tmp_path / "labels.jpg" and f.stat().st_size > 1000


def test_plot_results(tmp_path):
    header = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
              "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss",
              "val/cls_loss", "x/lr0", "x/lr1", "x/lr2"]
    with open(tmp_path / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for e in range(6):
            w.writerow([e] + [1.0 / (e + 1)] * 13)
    f = plot_results(tmp_path / "results.csv")
    assert f == tmp_path / "results.png" and f.stat().st_size > 1000
    assert plot_results(save_dir=tmp_path) == f
    with pytest.raises(FileNotFoundError):
        plot_results(tmp_path / "missing.csv")


def test_curves_and_confusion_matrix(tmp_path):
    px = np.linspace(0, 1, 1000)
    py = np.stack([1 - px, 1 - px ** 2], 1)
    plot_pr_curve(px, py, np.array([[0.5] * 10, [0.6] * 10]), tmp_path / "PR_curve.png", ["a", "b"])
    plot_mc_curve(px, py.T, tmp_path / "F1_curve.png", ["a", "b"], ylabel="F1")
    plot_confusion_matrix(np.eye(3) * 5, tmp_path / "confusion_matrix.png", ["a", "b"])
    for n in ("PR_curve.png", "F1_curve.png", "confusion_matrix.png"):
        assert (tmp_path / n).stat().st_size > 1000


def test_plot_study(tmp_path):
    from utils.plots import plot_study

    f = tmp_path / "study_x_y.txt"
    np.savetxt(f, np.array([[256, .1, .2, .3, .2, 0, 0, 0, 1, 5, 1], [384, .1, .2, .35, .25, 0, 0, 0, 1, 8, 1]]))
    assert plot_study(f).stat().st_size > 1000


def test_failed_plot_write_keeps_old_file(tmp_path, monkeypatch):
    """A figure whose write fails leaves the previous file intact and no temp file behind."""
    from matplotlib.figure import Figure

    f = tmp_path / "confusion_matrix.png"
    plot_confusion_matrix(np.eye(3) * 5, f, ["a", "b"])
    before = f.read_bytes()

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="No space left"):
        plot_confusion_matrix(np.eye(3), f, ["a", "b"])
    assert f.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [f.name]


def test_names_dict_one_home():
    from utils.names import names_dict

    assert names_dict(["a", "b"]) == {0: "a", 1: "b"}
    assert names_dict({"1": "b", 0: "a"}) == {0: "a", 1: "b"}
    assert names_dict(None) == {}
