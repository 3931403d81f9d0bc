"""utils/evolve.py: YOLOv7's --evolve pieces (bounds, mutation, parents, evolve.txt, hyp_evolved.yaml, plot)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from utils.evolve import (
    META,
    RESULT_NAMES,
    EvolveError,
    EvolveTable,
    append_evolve,
    best_hyp,
    constrain,
    evolvable_keys,
    mutate,
    next_hyp,
    plot_evolve,
    read_evolve,
    select_parent,
    write_evolved_yaml,
)
from utils.hyp import load_hyp

ROOT = Path(__file__).resolve().parents[1]
BASE = load_hyp(ROOT / "data" / "hyp.scratch.tiny.yaml")


def _results(map50_95: float) -> list[float]:
    return [0.5, 0.4, map50_95 + 0.1, map50_95, 0.05, 0.02, 0.01]


def test_meta_table_matches_yolov7_and_hyp_validation():
    assert len(META) == 30 and META["lr0"] == (1, 1e-5, 1e-1) and META["momentum"] == (0.3, 0.6, 0.98)
    assert META["iou_t"][0] == 0 and META["anchors"] == (2, 2.0, 10.0) and META["paste_in"] == (1, 0.0, 1.0)
    # every value evolution can produce is one the hyp validator accepts
    for k, (_, lo, hi) in META.items():
        load_hyp({**BASE, k: lo})
        load_hyp({**BASE, k: hi})
    assert "anchors" not in evolvable_keys(BASE) and "loss_ota" not in evolvable_keys(BASE)
    assert "anchors" in evolvable_keys({**BASE, "anchors": 3})


def test_mutation_is_seeded_and_stays_in_bounds():
    a = mutate(BASE, np.random.default_rng(3))
    assert a == mutate(BASE, np.random.default_rng(3))  # deterministic for a seeded generator
    assert a != mutate(BASE, np.random.default_rng(4))
    rng = np.random.default_rng(0)
    h = dict(BASE)
    changed = set()
    for _ in range(300):  # a long random walk never leaves the bounds
        new = mutate(h, rng)
        assert new != h or all(META[k][0] == 0 for k in evolvable_keys(h))
        changed |= {k for k in evolvable_keys(h) if new[k] != h[k]}
        h = new
        for k in evolvable_keys(h):
            _, lo, hi = META[k]
            assert lo <= h[k] <= hi and h[k] == round(h[k], 5), (k, h[k])
        assert h["loss_ota"] == BASE["loss_ota"]  # keys that do not evolve keep their value
    assert {k for k in evolvable_keys(BASE) if META[k][0] == 0}.isdisjoint(changed)  # gain 0: never mutated
    assert "lr0" in changed and "mosaic" in changed
    load_hyp(h)  # still a valid hyp


def test_constrain_clips_and_rounds():
    c = constrain({**BASE, "lr0": 5.0, "momentum": 0.1, "scale": 0.123456789, "loss_ota": 1})
    assert c["lr0"] == 0.1 and c["momentum"] == 0.6 and c["scale"] == 0.12346 and c["loss_ota"] == 1


def test_append_read_round_trip_sorted_unique(tmp_path):
    txt = tmp_path / "evolve.txt"
    hyps = [mutate(BASE, np.random.default_rng(i)) for i in range(3)]
    append_evolve(txt, hyps[0], _results(0.2))
    append_evolve(txt, hyps[1], _results(0.5))
    table = append_evolve(txt, hyps[2], _results(0.3))
    table2 = append_evolve(txt, hyps[2], _results(0.3))  # the same generation twice: kept once
    assert len(table2.rows) == 3
    assert txt.read_text().splitlines()[0] == "# " + " ".join(RESULT_NAMES + tuple(evolvable_keys(BASE)))
    back = read_evolve(txt)
    assert back.keys == evolvable_keys(BASE) and back.rows.shape == (3, 7 + len(back.keys))
    np.testing.assert_allclose(back.fitness, [0.9 * m + 0.1 * (m + 0.1) for m in (0.5, 0.3, 0.2)], rtol=1e-4)
    for row, h in zip(range(3), (hyps[1], hyps[2], hyps[0])):
        assert back.hyp(row) == pytest.approx({k: h[k] for k in back.keys}, rel=1e-4)
    np.testing.assert_allclose(table.rows, back.rows, rtol=1e-4)
    assert np.loadtxt(txt, ndmin=2).shape == back.rows.shape  # YOLOv7-style readers skip the header
    assert [p.name for p in tmp_path.iterdir()] == ["evolve.txt"]  # atomic rewrite: no temp file left
    best, res = best_hyp(back, BASE)
    assert best["lr0"] == pytest.approx(hyps[1]["lr0"], rel=1e-4) and best["loss_ota"] == BASE["loss_ota"]
    assert res[3] == pytest.approx(0.5)


def test_nonfinite_results_rank_last_and_bad_files_are_named(tmp_path):
    txt = tmp_path / "evolve.txt"
    append_evolve(txt, BASE, _results(0.1))
    table = append_evolve(txt, mutate(BASE, np.random.default_rng(1)), [float("nan")] * 7)
    assert table.fitness[-1] == 0 and table.fitness[0] > 0
    with pytest.raises(ValueError, match="7 values"):
        append_evolve(txt, BASE, [0.1, 0.2])
    with pytest.raises(EvolveError, match="differ from this hyp's evolvable keys"):
        append_evolve(txt, {**BASE, "anchors": 3}, _results(0.1))
    bad = tmp_path / "bad.txt"
    bad.write_text("# P R mAP@.5 mAP@.5:.95 val_box val_obj val_cls lr0\n0.1 0.2 x\n")
    with pytest.raises(EvolveError, match=r"bad.txt: not a table of numbers"):
        read_evolve(bad)
    bad.write_text("0.1 0.2 0.3\n")
    with pytest.raises(EvolveError, match="no header"):
        read_evolve(bad)
    with pytest.raises(EvolveError, match="3 columns, expected 7 results"):
        read_evolve(bad, keys=["lr0"])
    bad.write_text("# P R rm -rf\n")
    with pytest.raises(EvolveError, match="header must be"):
        read_evolve(bad)


def test_yolov7_headerless_file_is_read_with_given_keys(tmp_path):
    keys = ["lr0", "momentum"]
    p = tmp_path / "evolve.txt"
    np.savetxt(p, np.array([[0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.01, 0.9]]), "%10.3g")
    t = read_evolve(p, keys=keys)
    assert t.keys == keys and t.hyp(0) == {"lr0": 0.01, "momentum": 0.9}


def test_parent_selection_single_and_weighted():
    keys = ["lr0", "momentum"]
    rows = np.array([[0, 0, 0, f, 0, 0, 0, 0.01 * (i + 1), 0.9] for i, f in enumerate((0.1, 0.4, 0.2))])
    t = EvolveTable(keys, rows)
    one = EvolveTable(keys, rows[:1])
    rng = np.random.default_rng(0)
    assert select_parent(one, rng) == {"lr0": 0.01, "momentum": 0.9}  # one row: no zero-weight crash
    picks = {select_parent(t, rng)["lr0"] for _ in range(200)}
    assert picks <= {0.01, 0.02, 0.03} and 0.02 in picks
    assert 0.01 not in {select_parent(t, rng, n=2)["lr0"] for _ in range(50)}  # only the top n
    w = select_parent(t, rng, method="weighted")
    assert 0.02 < w["lr0"] < 0.03 and w["momentum"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="single' or 'weighted"):
        select_parent(t, rng, method="best")
    with pytest.raises(EvolveError):
        select_parent(EvolveTable(keys, np.zeros((0, 9))), rng)


def test_next_hyp_first_generation_then_mutated_parent(tmp_path):
    txt = tmp_path / "evolve.txt"
    first = next_hyp(BASE, txt, np.random.default_rng(0))
    assert first == constrain(BASE)
    append_evolve(txt, first, _results(0.3))
    second = next_hyp(BASE, txt, np.random.default_rng(0))
    assert second != first and set(second) == set(BASE) and second["loss_ota"] == BASE["loss_ota"]
    assert second == next_hyp(BASE, txt, np.random.default_rng(0))


def test_evolved_yaml_loads_cleanly_and_plot(tmp_path):
    txt = tmp_path / "evolve.txt"
    for i in range(6):
        append_evolve(txt, mutate(BASE, np.random.default_rng(i)), _results(0.1 * i))
    table = read_evolve(txt)
    hyp, res = best_hyp(table, {**BASE, "base": "x.yaml"})
    y = write_evolved_yaml(tmp_path / "hyp_evolved.yaml", hyp, res, len(table.rows))
    text = y.read_text()
    assert text.startswith("# Hyperparameter evolution results\n# Generations: 6\n# Metrics: P=0.5")
    loaded = load_hyp(y)
    assert "base" not in loaded and loaded["lr0"] == pytest.approx(hyp["lr0"])
    png = plot_evolve(txt)
    assert png == tmp_path / "evolve.png" and png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    single = tmp_path / "one.txt"
    append_evolve(single, BASE, _results(0.2))
    assert plot_evolve(single, tmp_path / "one.png").is_file()
