"""The recipe train.py picks when no ``--hyp`` is given: one short table of rules over the run's own facts.

YOLOv7's ``hyp.scratch.tiny.yaml`` is a recipe for hundreds of epochs of COCO: SGD at lr 0.01, gradient
accumulation to 64 images, OTA assignment, mosaic. A first run on a small dataset gets a few hundred
optimizer steps of it and learns almost nothing. So the choice depends on how many optimizer steps the
run will take at YOLOv7's nominal batch of 64 (the measure Ultralytics' ``optimizer=auto`` uses too):

- **long** (>= 10,000 steps): YOLOv7's recipe, unchanged.
- **short** (fewer): YOLOv7's recipe with the changes measured on the main job (data/hyp.shapes.yaml
  documents each): Adam at 3e-3 with no bias warm-up boost, an optimizer step per batch (nbs = batch size,
  at most 64), the plain assigner (OTA's dynamic k starts at 1 while IoUs are poor), no mosaic or mixup at
  the small image sizes short runs use (a mosaic halves every object), and a class gain that keeps telling
  classes apart worth learning when there are few of them (YOLOv7 scales ``cls`` by nc / 80).

``--hyp FILE`` always gives exactly that file's recipe, as in YOLOv7; ``--resume`` keeps the recipe the
run started with (it is stored in the checkpoint). The chosen recipe is written to the run's hyp.yaml.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from utils.hyp import load_hyp

HYP_DIR = Path(__file__).resolve().parents[1] / "data"
LONG_RUN_STEPS = 10_000  # optimizer steps at a nominal batch of 64 from which YOLOv7's own recipe applies
MOSAIC_MIN_IMG = 320  # below this input size a short run trains without mosaic / mixup


@dataclass(frozen=True)
class RunFacts:
    """What the recipe may depend on: the training set and the run's options."""

    images: int  # training images
    nc: int  # classes (1 with --single-cls)
    img_size: int  # training input size (px)
    epochs: int
    batch_size: int  # total batch size

    @property
    def steps(self) -> int:
        """Optimizer steps of the run at YOLOv7's nominal batch of 64 (or the batch, when larger)."""
        return math.ceil(self.images / max(self.batch_size, 64)) * self.epochs


@dataclass(frozen=True)
class Rule:
    """One row of the table: when it applies, the hyp file it starts from, and what it changes there."""

    name: str
    applies: Callable[[RunFacts], bool]
    base: str
    changes: Callable[[RunFacts], dict]
    why: Callable[[RunFacts], str]


def _short_changes(f: RunFacts) -> dict:
    small = f.img_size < MOSAIC_MIN_IMG
    return {"optimizer": "Adam", "lr0": 0.003, "warmup_bias_lr": 0.0, "nbs": min(f.batch_size, 64), "loss_ota": 0,
            "cls": min(2.0, 40.0 / max(f.nc, 1)), **({"mosaic": 0.0, "mixup": 0.0} if small else {})}


RULES: tuple[Rule, ...] = (
    Rule("long", lambda f: f.steps >= LONG_RUN_STEPS, "hyp.scratch.tiny.yaml", lambda f: {},
         lambda f: f"{f.steps:,} optimizer steps at batch 64 (>= {LONG_RUN_STEPS:,}): YOLOv7's own recipe"),
    Rule("short", lambda f: True, "hyp.scratch.tiny.yaml", _short_changes,
         lambda f: f"{f.steps:,} optimizer steps at batch 64 (< {LONG_RUN_STEPS:,}) on {f.images:,} images"
                   + (f", no mosaic below {MOSAIC_MIN_IMG} px" if f.img_size < MOSAIC_MIN_IMG else "")),
)


def choose_recipe(facts: RunFacts) -> tuple[dict, str]:
    """(validated hyperparameters, one line saying which rule chose them and why) for a run without --hyp."""
    rule = next(r for r in RULES if r.applies(facts))
    hyp = load_hyp(HYP_DIR / rule.base)
    changes = rule.changes(facts)
    hyp = load_hyp({**hyp, **changes}, source=f"recipe '{rule.name}'")
    changed = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in changes.items())
    line = (f"Recipe '{rule.name}' ({rule.why(facts)}): {rule.base}"
            + (f" with {changed}" if changed else ""))
    return hyp, line


__all__ = ["LONG_RUN_STEPS", "RULES", "Rule", "RunFacts", "choose_recipe"]
