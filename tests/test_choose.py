"""compare, advise and --approach auto on real photos (the tiny set), plus the pieces they are built from."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pawsight import api, choose
from pawsight.cli import main
from pawsight.data import per_class_subset, scan
from pawsight.errors import PawsightError
from pawsight.run import read_run_info

FAST_CLASSICAL = choose.Recipe("classical-hcl", "classical", (("features", "hog,color,lbp"),),
                               "HOG + colour + LBP")


def test_per_class_subsets_are_seeded_nested_and_leave_validation_alone(tiny: Path) -> None:
    ds = scan(tiny)
    small, big = (per_class_subset(ds.samples, n, seed=3) for n in (5, 12))
    train = lambda xs: {str(s.path) for s in xs if s.split == "train"}  # noqa: E731
    assert train(small) < train(big)  # nested: growing adds pictures, never swaps them
    for subset, n in ((small, 5), (big, 12)):
        labels = [s.label for s in subset if s.split == "train"]
        assert np.bincount(labels).tolist() == [n, n]
        assert [s for s in subset if s.split == "validation"] == ds.split("validation")
    assert train(per_class_subset(ds.samples, 5, seed=3)) == train(small)  # same seed, same subset
    assert train(per_class_subset(ds.samples, 5, seed=4)) != train(small)
    with pytest.raises(PawsightError):
        per_class_subset(ds.samples, 0)


def test_train_per_class_trains_on_the_subset_and_validates_on_everything(tiny: Path, tmp_path: Path) -> None:
    _, info = api.train(tiny, "classical", tmp_path / "r", per_class=6, features="hog", model="logreg",
                        flip=False)
    assert info["metrics"]["train_size"] == 12
    assert info["metrics"]["validation"]["n_images"] == 40
    assert info["per_class"] == 6


def test_scratch_budgets_share_what_is_left_and_drop_points_that_cannot_learn() -> None:
    counts = {"a": 100, "b": 100}
    budgets = choose._scratch_budgets([10, 50, None], counts, 300.0)
    assert set(budgets) == {10, 50, None}
    assert budgets[10] < budgets[50] < budgets[None]
    assert sum(budgets.values()) <= 300.0
    few = choose._scratch_budgets([10, 50, None], counts, 40.0)  # 10/class would get < 15 s: dropped
    assert 10 not in few and few and sum(few.values()) <= 40.0
    assert choose._scratch_budgets([10, None], counts, 5.0) == {}


def test_parse_sizes_and_approaches() -> None:
    assert choose.parse_sizes("50,all,10,50") == [10, 50, None]
    assert choose.parse_approaches("transfer, classical") == ["transfer", "classical"]
    for bad in ("0", "ten", "-5"):
        with pytest.raises(PawsightError):
            choose.parse_sizes(bad)
    with pytest.raises(PawsightError):
        choose.parse_approaches("classical,deep")


@pytest.mark.slow
def test_compare_on_the_tiny_set_writes_charts_csv_html_and_a_leaderboard(tiny: Path, tmp_path: Path) -> None:
    import matplotlib

    out = tmp_path / "cmp"
    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a notebook's inline backend, say: drawing the charts must not switch it
    try:
        result = choose.compare(tiny, ["classical", "transfer"], [5, None], out=out, time_budget=600,
                                params={"classical": {"features": "hog,color,lbp"}})
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    with open(out / "compare.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["approach"], r["per_class"]) for r in rows) == [
        ("classical", "5"), ("classical", "all"), ("transfer", "5"), ("transfer", "all")]
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        assert int(r["n_train"]) == (10 if r["per_class"] == "5" else 80)
        assert float(r["train_seconds"]) > 0 and float(r["images_per_second"]) > 0
        own = [p for p in Path(r["run"]).glob("model.*") if p.suffix != ".onnx"]  # .onnx: same model
        assert int(r["model_bytes"]) == sum(p.stat().st_size for p in own)
        # the row's accuracy is the run's own validation accuracy, on all 40 validation pictures
        info = read_run_info(r["run"])
        assert info["metrics"]["validation"]["accuracy"] == pytest.approx(float(r["accuracy"]))
        assert info["metrics"]["validation"]["n_images"] == 40
        assert info["metrics"]["train_size"] == int(r["n_train"])
    for name in ("accuracy-vs-size.png", "accuracy-vs-time.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
            # one coloured line per approach: both matplotlib default colours are drawn
            rgb = np.asarray(im.convert("RGB"))
            for colour in ((31, 119, 180), (255, 127, 14)):
                assert (rgb == colour).all(axis=-1).sum() > 50
    page = (out / "compare.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and page.count("<tr><td>") == 4
    board = choose.format_leaderboard([choose.CompareRow(**r) for r in result["rows"]]).splitlines()
    assert len(board) == 5  # header + one line per (approach, size)
    accuracies = [float(line.split()[3].rstrip("%")) for line in board[1:]]
    assert accuracies == sorted(accuracies, reverse=True)
    # a second compare into the same folder needs --overwrite; a foreign folder is refused untouched
    assert main(["compare", str(tiny), "--sizes", "5", "--out", str(out)]) == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["compare", str(tiny), "--sizes", "5", "--out", str(foreign)]) == 2
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_compare_command_prints_the_leaderboard(tiny: Path, tmp_path: Path, capsys) -> None:
    code = main(["compare", str(tiny), "--approaches", "transfer", "--sizes", "4,8",
                 "--out", str(tmp_path / "c")])
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("transfer")]
    assert sorted(line.split()[1] for line in lines) == ["4", "8"]
    assert all(0 <= float(line.split()[3].rstrip("%")) <= 100 for line in lines)


def test_compare_html_escapes_names() -> None:
    row = choose.CompareRow("<b>x</b>", 5, 10, 0.5, 1.0, 10.0, 100, note="<script>alert(1)</script>")
    page = choose.compare_html([row], {"data": "/d/<img src=x onerror=alert(1)>", "seconds": 1.0,
                                       "time_budget": 10.0}, {})
    assert "<script>" not in page and "<img src=x" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_compare_skips_points_when_the_budget_is_spent(tiny: Path, tmp_path: Path) -> None:
    says: list[str] = []
    with pytest.raises(PawsightError, match="nothing was compared"):  # and nothing written (issue 14.5)
        choose.compare(tiny, ["classical"], [4, 8], time_budget=1e-9, out=tmp_path / "c", say=says.append)
    assert says == [f"classical at {n} per class: skipped (time budget exhausted)" for n in (4, 8)]
    assert not (tmp_path / "c" / "compare.csv").exists()
    with pytest.raises(PawsightError, match="time_budget must be greater than 0"):
        choose.compare(tiny, ["classical"], [4], time_budget=0.0, out=tmp_path / "d")


@pytest.fixture(scope="module")
def calibration(tiny: Path) -> choose.Calibration:
    return choose.calibrate(tiny, [FAST_CLASSICAL, choose.FROZEN[0], choose.SCRATCH], per_class=8)


@pytest.mark.slow
def test_calibration_measures_each_part(calibration: choose.Calibration) -> None:
    cal = calibration
    assert set(cal.decode) == {"128", "224", "112"} and all(v > 0 for v in cal.decode.values())
    assert cal.classical["extract_per_image"] > 0 and len(cal.classical["pipeline"]) == 2
    lite0 = cal.backbones["efficientnet_lite0"]
    assert lite0["feature_per_image"] > 0 and lite0["setup"] >= 0
    assert cal.train_images_per_second["scratch"] > 0
    assert 0 <= cal.probe["classical"] <= 1 and 0 <= cal.probe["transfer-lite0"] <= 1
    # estimates grow with the data and the classical one counts mirrored copies
    small = choose.estimate_seconds(FAST_CLASSICAL, cal, 100, 50)
    big = choose.estimate_seconds(FAST_CLASSICAL, cal, 1000, 500)
    assert small is not None and big is not None and big > small + 800 * cal.classical["extract_per_image"]
    assert choose.estimate_seconds(choose.SCRATCH, cal, 100, 50, budget=60) == pytest.approx(
        60 + 2 + 150 * cal.decode["112"])


def test_advise_prints_a_recommendation_with_an_estimate_for_each_approach(
        tiny: Path, calibration: choose.Calibration, capsys) -> None:
    advice = choose.advise(tiny, 300, calibration=calibration)
    names = {e["recipe"] for e in advice["estimates"]}
    assert {"classical", "transfer-lite0", "scratch"} <= names  # every approach, estimated
    assert json.loads(json.dumps(advice)) == advice  # plain JSON
    for key in ("data", "hardware", "calibration", "estimates", "recommendation"):
        assert key in advice
    assert advice["data"]["n_train"] == 80 and advice["data"]["classes"] == ["cats", "dogs"]
    assert advice["hardware"]["cores"] >= 1
    rec = advice["recommendation"]
    assert rec["recipe"] in names and rec["reasons"]
    assert rec["command"].startswith(f"pawsight train {tiny} ")  # the user's folder, ready to copy
    assert all(e["command"].startswith(f"pawsight train {tiny} ") for e in advice["estimates"])
    text = choose.format_advice(advice)
    assert "recommended:" in text and "classical" in text and "transfer-lite0" in text


@pytest.mark.slow
def test_advise_command_json(tiny: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(choose, "RECIPES", [FAST_CLASSICAL, choose.FROZEN[0]])  # fewer recipes: faster
    assert main(["advise", str(tiny), "--time-budget", "5m", "--json"]) == 0
    advice = json.loads(capsys.readouterr().out)
    est = {e["recipe"]: e["estimated_seconds"] for e in advice["estimates"]}
    assert set(est) == {"classical-hcl", "transfer-lite0"}
    assert all(v is not None and v > 0 for v in est.values())
    assert advice["recommendation"]["recipe"] in est and advice["recommendation"]["reasons"]
    assert advice["calibration"]["seconds"] > 0 and advice["data"]["n_validation"] == 40


@pytest.mark.slow
def test_auto_picks_the_best_cross_validated_candidate_and_records_all(tiny: Path, tmp_path: Path) -> None:
    candidates = [FAST_CLASSICAL, choose.FROZEN[0]]
    model, info = choose.auto_train(tiny, tmp_path / "auto", time_budget=600, candidates=candidates)
    auto = read_run_info(tmp_path / "auto")["auto"]
    scores = {c["recipe"]: c["cv_accuracy"] for c in auto["candidates"]}
    assert set(scores) == {"classical-hcl", "transfer-lite0"}
    assert all(0 <= s <= 1 for s in scores.values())
    assert auto["winner"] == max(scores, key=scores.get)
    winner = next(r for r in candidates if r.name == auto["winner"])
    assert info["approach"] == winner.approach
    assert auto["advice"]["recommendation"]["reasons"]
    assert all(c["cv_pictures"] == 80 for c in auto["candidates"])  # every training picture, no validation
    # no budget for cross-validation: nothing is cross-validated, the fastest candidate is trained anyway
    _, info = choose.auto_train(tiny, tmp_path / "none", time_budget=1e-3, candidates=candidates)
    auto = info["auto"]
    assert all(c.get("cv_accuracy") is None for c in auto["candidates"])
    assert "without cross-validation" in next(c for c in auto["candidates"]
                                              if c["recipe"] == auto["winner"])["status"]


def test_cross_validation_uses_only_the_training_split(tiny: Path) -> None:
    r = choose.cross_validate(tiny, "classical", {"features": "hog", "model": "logreg", "flip": False},
                              folds=2)
    assert r["cv_pictures"] == 80 and r["folds"] == 2 and 0 <= r["cv_accuracy"] <= 1


def test_cross_validation_drops_duplicates_like_the_final_training(tiny: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    for p in sorted((data / "train" / "cats").iterdir())[:6]:  # exact copies under other names
        shutil.copy(p, p.with_name("copy-" + p.name))
    params = {"features": "hog", "model": "logreg", "flip": False}
    assert choose.cross_validate(data, "classical", params, folds=2)["cv_pictures"] == 86
    kept = choose.cross_validate(data, "classical", params, folds=2, drop_duplicates=True)
    assert kept["cv_pictures"] == 80


def test_auto_refuses_model_options_and_existing_runs(tiny: Path, tmp_path: Path) -> None:
    assert main(["train", str(tiny), "--approach", "auto", "--model", "knn",
                 "--out", str(tmp_path / "a")]) == 2
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "run.json").write_text("{}")
    with pytest.raises(PawsightError, match="already holds a run"):
        choose.auto_train(tiny, tmp_path / "b", candidates=[FAST_CLASSICAL])


def test_compare_page_says_which_approach_and_why() -> None:
    rows = [choose.CompareRow("classical", None, 2000, 0.819, 60.0, 24.0, 5_000_000),
            choose.CompareRow("transfer", None, 2000, 0.99, 17.0, 300.0, 13_000_000),
            choose.CompareRow("transfer", 100, 200, 0.97, 8.0, 300.0, 13_000_000),
            choose.CompareRow("scratch", 100, 200, None, None, None, None, note="skipped: time budget")]
    assert choose.verdict(rows) == (
        "transfer is the most accurate here: 99.0% on the validation pictures after training on 2000 "
        "pictures "
        "in 17 s; classical reached 81.9% on 2000 pictures in 60 s (17.1 points less).")
    page = choose.compare_html(rows, {"data": "/d/pets", "seconds": 90.0, "time_budget": 600.0},
                               {"accuracy-vs-size.png": b"png"})
    assert 'id="verdict"' in page and "transfer is the most accurate here" in page
    assert "accuracy-vs-size.png</figcaption>" not in page and "more pictures would still help" in page
    assert "<th>note</th>" in page  # a skipped point says why
    faster = [choose.CompareRow("a", None, 10, 0.9, 100.0, None, None),
              choose.CompareRow("b", None, 10, 0.8, 10.0, None, None)]
    assert choose.verdict(faster).endswith("(10.0 points less, but faster to train).")
    plain = choose.compare_html(faster, {"data": "d", "seconds": 1, "time_budget": 9}, {})
    assert "<th>note</th>" not in plain
