"""utils/hyp.py: base inheritance, one clear line per bad value, shipped files load without warnings."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from utils.cli import UserError
from utils.hyp import KNOWN_KEYS, REQUIRED_KEYS, HypError, load_hyp, validate_hyp
from utils.log import LOGGER

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "data").glob("hyp*.yaml"))
TINY = ROOT / "data" / "hyp.scratch.tiny.yaml"


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def warnings_seen():
    h = _Records()
    LOGGER.addHandler(h)
    level = LOGGER.level
    LOGGER.setLevel(logging.DEBUG)
    try:
        yield h.lines
    finally:
        LOGGER.removeHandler(h)
        LOGGER.setLevel(level)


def _over_tiny(tmp_path: Path, text: str, name: str = "hyp.x.yaml") -> Path:
    p = tmp_path / name
    p.write_text(f"base: {TINY}\n{text}\n")
    return p


@pytest.mark.parametrize("text, expected", [
    ("lr0: .nan", "lr0: must be a finite number > 0 and <= 1 (got nan)"),
    ("lr0: 1e12", "lr0: must be a finite number > 0 and <= 1 (got 1e12)"),
    ("lr0: 1.0e+12", "lr0: must be a finite number > 0 and <= 1 (got 1000000000000.0)"),
    ("lr0: -1", "lr0: must be a finite number > 0 and <= 1 (got -1)"),
    ("lr0: 0", "lr0: must be a finite number > 0 and <= 1 (got 0)"),
    ("lr0: abc", "lr0: must be a finite number > 0 and <= 1 (got 'abc')"),
    ("lr0: true", "lr0: must be a finite number > 0 and <= 1 (got True)"),
    ("lr0:", "lr0: must be a finite number > 0 and <= 1 (got nothing)"),
    ("lr0: [1, 2]", "lr0: must be a finite number > 0 and <= 1 (got a list)"),
    ("momentum: 5", "momentum: must be a finite number >= 0 and < 1 (got 5)"),
    ("box: -10", "box: must be a finite number >= 0 and <= 1000 (got -10)"),
    ("obj: .inf", "obj: must be a finite number >= 0 and <= 1000 (got inf)"),
    ("mosaic: 1.5", "mosaic: must be a finite number >= 0 and <= 1 (got 1.5)"),
    ("anchor_t: 0.5", "anchor_t: must be a finite number >= 1 and <= 100 (got 0.5)"),
    ("nbs: 0", "nbs: must be an integer >= 1 and <= 65536 (got 0)"),
    ("nbs: 16.5", "nbs: must be an integer >= 1 and <= 65536 (got 16.5)"),
    ("loss_ota: 2", "loss_ota: must be 0 or 1 (got 2)"),
    ("optimizer: RMSprop", "optimizer: must be one of SGD, Adam (got 'RMSprop')"),
    ("base: [a, b]", "base: must be the name of another hyp yaml (got a list)"),
])
def test_bad_values_name_file_and_key(tmp_path, text, expected):
    p = tmp_path / "hyp.x.yaml"
    p.write_text(f"{text}\n" if text.startswith("base") else f"base: {TINY}\n{text}\n")
    with pytest.raises(HypError) as e:
        load_hyp(p)
    assert str(e.value) == f"{p}: {expected}"
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)


def test_number_text_and_case_are_accepted(tmp_path):
    h = load_hyp(_over_tiny(tmp_path, "lr0: 1e-3\nweight_decay: 5E-4\noptimizer: adam\nnbs: 32.0"))
    assert h["lr0"] == 0.001 and h["weight_decay"] == 0.0005 and h["optimizer"] == "adam" and h["nbs"] == 32


def test_file_level_errors(tmp_path):
    cases = {
        "list.yaml": ("- 1\n- 2\n", "expected a mapping of hyperparameters (key: value), got a list"),
        "empty.yaml": ("", "expected a mapping of hyperparameters (key: value), got nothing"),
        "syntax.yaml": ("lr0: 0.01\nmomentum: [0.9\nbox: 0.05\n", ":3: invalid yaml"),
        "tab.yaml": ("lr0: 0.01\n\tbox: 1\n", ":2: invalid yaml"),
        "binary.yaml": (b"\xff\xfe\x00garbage", ": hyp file is not UTF-8 text"),
    }
    for name, (content, expected) in cases.items():
        p = tmp_path / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(HypError, match=None) as e:
            load_hyp(p)
        sep = "" if expected.startswith(":") else ": "
        assert str(e.value).startswith(f"{p}{sep}{expected}"), str(e.value)
    with pytest.raises(HypError, match="hyp file not found"):
        load_hyp(tmp_path / "missing.yaml")


def test_missing_required_keys_are_named(tmp_path):
    p = tmp_path / "partial.yaml"
    p.write_text("lr0: 0.01\nmomentum: 0.9\n")
    with pytest.raises(HypError, match=r"partial.yaml: missing hyperparameters 'lrf', 'weight_decay'"):
        load_hyp(p)


def test_base_cycles_and_depth(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nlr0: 0.01\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nlr0: 0.02\n")
    cycle = r"b.yaml: base: 'base' chain too deep: it is a cycle \(a.yaml -> b.yaml -> a.yaml\)"
    with pytest.raises(HypError, match=cycle):
        load_hyp(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(HypError, match="too deep"):
        load_hyp(tmp_path / "self.yaml")
    (tmp_path / "h0.yaml").write_text(f"base: {TINY}\n")
    for i in range(1, 7):
        (tmp_path / f"h{i}.yaml").write_text(f"base: h{i - 1}.yaml\nlr0: 0.0{i}\n")
    assert load_hyp(tmp_path / "h4.yaml")["lr0"] == 0.04  # 6 files: allowed
    with pytest.raises(HypError, match="too deep"):
        load_hyp(tmp_path / "h5.yaml")


def test_bad_value_in_a_base_names_the_base(tmp_path):
    (tmp_path / "base.yaml").write_text(TINY.read_text().replace("box: 0.05", "box: -1"))
    top = tmp_path / "top.yaml"
    top.write_text("base: base.yaml\nlr0: 0.02\n")
    with pytest.raises(HypError) as e:
        load_hyp(top)
    assert str(e.value).startswith(f"{tmp_path / 'base.yaml'}: box:")


def test_base_inheritance_overrides():
    h = load_hyp(ROOT / "data" / "hyp.shapes.yaml")
    own = yaml.safe_load((ROOT / "data" / "hyp.shapes.yaml").read_text())
    base = yaml.safe_load(TINY.read_text())
    assert "base" not in h
    assert all(h[k] == v for k, v in own.items() if k != "base")
    assert all(h[k] == v for k, v in base.items() if k not in own)


def test_unknown_keys_warned_once_with_file(tmp_path, warnings_seen):
    p = _over_tiny(tmp_path, "bogus: 1\nlr_zero: 3")
    load_hyp(p)
    load_hyp(p)
    unknown = [w for w in warnings_seen if "unknown hyp key" in w]
    assert unknown == [f"WARNING: {p}: unknown hyp keys bogus, lr_zero (not used by this project)"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_hyp_files_load_without_warnings(path, warnings_seen):
    h = load_hyp(path)
    assert warnings_seen == []
    assert set(REQUIRED_KEYS) <= set(h) and set(h) <= KNOWN_KEYS
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= KNOWN_KEYS  # every shipped key is known (commented-out keys aside)


def test_dicts_are_validated_with_their_source():
    good = load_hyp(TINY)
    assert load_hyp(dict(good)) == good
    with pytest.raises(HypError, match=r"^last.pt: hyp: lr0: must be a finite number"):
        load_hyp({**good, "lr0": float("nan")}, source="last.pt: hyp")
    with pytest.raises(HypError, match="missing hyperparameter 'anchor_t'"):
        load_hyp({k: v for k, v in good.items() if k != "anchor_t"})
    assert validate_hyp({"mosaic": 0.5})["mosaic"] == 0.5  # partial dicts: only what is there
    with pytest.raises(HypError, match="expected a mapping"):
        validate_hyp([1, 2])  # type: ignore[arg-type]


def test_huge_aliased_values_are_refused_quickly(tmp_path):
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
              for i in range(1, 9)]
    p = tmp_path / "laughs.yaml"
    p.write_text("\n".join(lines[:-1] + [lines[-1].replace("a8: &a8", "lr0:")]) + "\n")
    with pytest.raises(HypError, match=r"refused: its aliases expand to more than"):
        load_hyp(p)  # the shared yaml reader refuses the expansion before building anything
