"""The "neither" answer: fitted and calibrated at training time, saved with the run (no pickle), applied by
decide() everywhere, adjustable with --threshold, exported inside the ONNX graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pawsight
from pawsight import api, cli
from pawsight.export import export_onnx
from pawsight.inference import UNKNOWN
from pawsight.models.neither import (
    MARGIN,
    QUANTILE,
    cross_validated_distances,
    fit_neither,
    knn_distance,
    unit,
)

OTHERS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "not_cats_or_dogs"
# clearly not cats or dogs: cloudy skies, a theatre curtain, a rainy street. (A run trained on the 80 pictures
# of the tiny set has a sparse reference, so its threshold is lenient: it sets aside about half of
# not_cats_or_dogs, and these among them. With the 2,000 pictures of the dev set it is 96%: bench neither.)
SOMETHING_ELSE = ["weather_cloudy/cloudy71.jpg", "objects/n04418357_theater_curtain.jpg",
                  "weather_rain/rain72.jpg"]


def test_the_score_is_calibrated_on_cross_validated_training_distances() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16)) * 3
    y = np.repeat([0, 1], 100)
    F = centres[y] + rng.normal(size=(200, 16))
    neither = fit_neither(F, y, k=5)
    cv = cross_validated_distances(unit(F), y, 5)
    assert neither.scale == pytest.approx(np.quantile(cv, QUANTILE) * MARGIN)
    import torch

    inside = neither(torch.from_numpy(F[:20].astype(np.float32))).numpy()
    outside = neither(torch.from_numpy(rng.normal(size=(20, 16)).astype(np.float32) * 3 - 5)).numpy()
    assert (inside < 1).all() and (outside > 1).all()
    np.testing.assert_allclose(inside * neither.scale, knn_distance(unit(F[:20]), unit(F), 5), atol=1e-5)


def test_a_transfer_run_saves_its_score_and_threshold_without_pickle(transfer_run) -> None:
    description = json.loads((transfer_run / "model.json").read_text())["neither"]
    assert description["score"] == "cosine-knn" and description["threshold"] == 1.0
    assert not list(transfer_run.glob("*.pkl")) and not list(transfer_run.glob("*.pickle"))
    predictor = pawsight.load(transfer_run)
    assert predictor.threshold == 1.0
    record = predictor.predict_records(str(OTHERS / SOMETHING_ELSE[0]))[0]
    assert isinstance(record["unknown_score"], float)


def test_something_else_is_unknown_and_a_clear_cat_is_not(transfer_run, tiny) -> None:
    predictor = pawsight.load(transfer_run)
    others = [str(OTHERS / name) for name in SOMETHING_ELSE]
    assert predictor.predict(others) == [UNKNOWN] * len(others)
    cats = sorted((tiny / "validation" / "cats").iterdir())[:3]
    assert predictor.predict(cats) == ["cats"] * 3
    # the threshold moves the decision, and only the decision
    lenient = pawsight.load(transfer_run, threshold=1e6)
    assert UNKNOWN not in lenient.predict(others)
    np.testing.assert_allclose(lenient.predict_proba(others), predictor.predict_proba(others))
    assert pawsight.load(transfer_run, threshold=0.0).predict(cats) == [UNKNOWN] * 3


def test_threshold_on_the_command_line_and_in_evaluate(transfer_run, tiny, capsys) -> None:
    image = str(OTHERS / SOMETHING_ELSE[1])
    assert cli.main(["predict", str(transfer_run), image, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == UNKNOWN
    assert cli.main(["predict", str(transfer_run), image, "--format", "json", "--threshold", "1e6"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] != UNKNOWN
    strict = api.evaluate(transfer_run, tiny, threshold=0.0)
    assert strict["unknown"] == strict["n_images"] and strict["accuracy_answered"] is None
    normal = api.evaluate(transfer_run, tiny)
    assert normal["threshold"] == 1.0 and normal["unknown"] <= 2


def test_the_onnx_file_carries_the_score_and_its_threshold(transfer_run, tmp_path) -> None:
    out = tmp_path / "m.onnx"
    result = export_onnx(transfer_run, out)
    assert result["max_abs_diff_score"] <= 1e-4
    from_file, from_run = pawsight.load(out), pawsight.load(transfer_run)
    assert from_file.threshold == 1.0 and from_file.info["neither"]["score"] == "cosine-knn"
    others = [str(OTHERS / name) for name in SOMETHING_ELSE]
    a, b = from_file.predict_scores(others)[1], from_run.predict_scores(others)[1]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert from_file.predict(others) == [UNKNOWN] * len(others)
    assert pawsight.load(out, threshold=1e6).predict(others) != [UNKNOWN] * len(others)


def test_a_scratch_run_has_the_score_too(scratch_run) -> None:
    predictor = pawsight.load(scratch_run)
    assert predictor.threshold == 1.0
    scores = predictor.predict_scores(str(OTHERS / SOMETHING_ELSE[0]))[1]
    assert scores is not None and np.isfinite(scores).all()


def test_a_run_trained_without_the_score_always_answers_a_class(tiny, tmp_path) -> None:
    run = tmp_path / "plain"
    api.train(tiny, out=run, neither=False)
    predictor = pawsight.load(run)
    assert predictor.threshold is None
    records = predictor.predict_records([str(OTHERS / name) for name in SOMETHING_ELSE])
    assert all(r["label"] in ("cats", "dogs") and r["unknown_score"] is None for r in records)


@pytest.mark.parametrize("approach", ["transfer", "scratch"])
def test_the_validation_record_of_training_answers_like_evaluate(approach, tiny, tmp_path) -> None:
    """The evaluation training saves holds decide()'s answers ("unknown" included), the same as `evaluate`
    gives on the same pictures, not the most probable class."""
    data = tmp_path / "data"
    for split in ("train", "validation"):
        for cls in ("cats", "dogs"):
            (data / split / cls).mkdir(parents=True)
            for p in sorted((tiny / split / cls).iterdir()):
                (data / split / cls / p.name).symlink_to(p)
    for name in SOMETHING_ELSE:  # pictures of other things filed under "cats" in the validation split
        (data / "validation" / "cats" / Path(name).name).symlink_to(OTHERS / name)
    run = tmp_path / "run"
    extra = {"size": 32, "width": 8, "epochs": 1, "batch_size": 16} if approach == "scratch" else {}
    api.train(data, approach=approach, out=run, **extra)
    from pawsight.run import read_evaluation

    saved = read_evaluation(run)
    fresh = api.evaluate(run, data, save=False)
    by_path = {p["path"]: p["predicted"] for p in fresh["predictions"]}
    assert {p["path"]: p["predicted"] for p in saved["predictions"]} == by_path
    assert saved["unknown"] == fresh["unknown"] and saved["threshold"] == fresh["threshold"] == 1.0
    if approach == "transfer":  # the tiny run's score sets these three aside (see SOMETHING_ELSE)
        assert [by_path[str((data / "validation" / "cats" / Path(n).name).absolute())]
                for n in SOMETHING_ELSE] == [UNKNOWN] * 3


def test_a_class_named_unknown_turns_the_neither_answer_off(tiny, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    for split in ("train", "validation"):
        for cls, name in (("cats", "cats"), ("dogs", UNKNOWN)):
            (data / split / name).mkdir(parents=True)
            for p in sorted((tiny / split / cls).iterdir()):
                (data / split / name / p.name).symlink_to(p)
    run = tmp_path / "run"
    api.train(data, out=run)
    assert "a class is named 'unknown'" in capsys.readouterr().err
    predictor = pawsight.load(run)
    assert predictor.classes_ == ["cats", UNKNOWN] and predictor.threshold is None
    dog = sorted((tiny / "validation" / "dogs").iterdir())[0]
    assert predictor.predict([dog, OTHERS / SOMETHING_ELSE[0]])[0] == UNKNOWN  # the class, never the answer
    assert json.loads((run / "run.json").read_text())["params"]["neither"] is False
