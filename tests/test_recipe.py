"""The automatic recipe (utils/recipe.py): the rule table, the main job's recipe, and train.py's use of it."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from utils.hyp import load_hyp
from utils.recipe import LONG_RUN_STEPS, RunFacts, choose_recipe

ROOT = Path(__file__).resolve().parents[1]
MAIN_JOB = RunFacts(images=400, nc=4, img_size=128, epochs=30, batch_size=16)


@pytest.fixture(autouse=True)
def _keep_project_log_handlers():
    """train.main() in this process adds a stderr handler bound to the test's captured stream; drop it after."""
    from utils.log import LOGGER
    before = list(LOGGER.handlers)
    yield
    LOGGER.handlers[:] = before


def test_main_job_gets_exactly_its_tuned_recipe():
    """With no --hyp the built-in shapes run gets data/hyp.shapes.yaml's values, key for key."""
    hyp, line = choose_recipe(MAIN_JOB)
    assert hyp == load_hyp(ROOT / "data" / "hyp.shapes.yaml")
    assert line.startswith("Recipe 'short'") and "210 optimizer steps" in line and "no mosaic" in line


def test_long_run_gets_yolov7s_recipe_unchanged():
    coco = RunFacts(images=118_287, nc=80, img_size=640, epochs=300, batch_size=64)
    assert coco.steps >= LONG_RUN_STEPS
    hyp, line = choose_recipe(coco)
    assert hyp == load_hyp(ROOT / "data" / "hyp.scratch.tiny.yaml")
    assert line.startswith("Recipe 'long'") and "hyp.scratch.tiny.yaml" in line and " with " not in line


@pytest.mark.parametrize("facts", [
    RunFacts(images=160, nc=1, img_size=256, epochs=30, batch_size=16),
    RunFacts(images=2000, nc=20, img_size=320, epochs=100, batch_size=32),
    RunFacts(images=100, nc=3, img_size=640, epochs=300, batch_size=128),
])
def test_short_run_rules(facts):
    hyp, _ = choose_recipe(facts)
    tiny = load_hyp(ROOT / "data" / "hyp.scratch.tiny.yaml")
    assert hyp["optimizer"] == "Adam" and hyp["loss_ota"] == 0 and hyp["warmup_bias_lr"] == 0
    assert hyp["nbs"] == min(facts.batch_size, 64)
    assert hyp["cls"] * facts.nc / 80 == pytest.approx(min(2.0 * facts.nc / 80, 0.5))  # never above YOLOv7's 0.5
    small = facts.img_size < 320
    assert (hyp["mosaic"], hyp["mixup"]) == ((0.0, 0.0) if small else (tiny["mosaic"], tiny["mixup"]))
    assert all(hyp[k] == v for k, v in tiny.items() if k not in
               {"optimizer", "lr0", "warmup_bias_lr", "nbs", "loss_ota", "cls", "mosaic", "mixup"})


def test_boundary_between_short_and_long():
    n = 64 * 100
    short = RunFacts(images=n, nc=2, img_size=640, epochs=LONG_RUN_STEPS // 100 - 1, batch_size=16)
    long = RunFacts(images=n, nc=2, img_size=640, epochs=LONG_RUN_STEPS // 100, batch_size=16)
    assert choose_recipe(short)[1].startswith("Recipe 'short'")
    assert choose_recipe(long)[1].startswith("Recipe 'long'")


def _tiny_dataset(tmp_path: Path, n: int = 6) -> Path:
    import cv2
    import numpy as np
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(tmp_path / "images" / split / f"{i}.jpg"), np.full((64, 64, 3), 40 * i % 255, np.uint8))
            (tmp_path / "labels" / split / f"{i}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "images/train", "val": "images/val",
                                    "nc": 2, "names": ["a", "b"]}))
    return data


def test_train_without_hyp_chooses_from_the_run(tmp_path, capsys):
    from train import parse_opt, prepare_new
    data = _tiny_dataset(tmp_path)
    opt = parse_opt(["--data", str(data), "--img-size", "64", "--epochs", "3", "--batch-size", "4"])
    hyp = prepare_new(opt)
    out = capsys.readouterr().out
    assert "Recipe 'short' (3 optimizer steps at batch 64 (< 10,000) on 6 images" in out
    assert hyp == choose_recipe(RunFacts(images=6, nc=2, img_size=64, epochs=3, batch_size=4))[0]
    opt = parse_opt(["--data", str(data), "--hyp", "data/hyp.scratch.tiny.yaml", "--epochs", "3"])
    assert prepare_new(opt) == load_hyp(ROOT / "data" / "hyp.scratch.tiny.yaml")  # a given file is kept as is


def test_train_without_hyp_names_a_missing_train_split(tmp_path, capsys):
    import train
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "nowhere", "val": "nowhere", "nc": 1,
                                    "names": ["a"]}))
    assert train.run_cli(train.main, ["--data", str(data)], prog="train.py") != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train.py: error:")]
    assert len(err) == 1 and "data.yaml" in err[0] and "nowhere" in err[0]
