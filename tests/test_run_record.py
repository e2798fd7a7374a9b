"""A run keeps its own record (issue 9 §1): the manifest of the exact training and validation pictures, so
`evaluate` on the training folder scores what the run validated on even after the folder changed; every
evaluation saved with one prediction per picture; history and status read through run.py."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pawsight
from pawsight.errors import PawsightError
from pawsight.run import (
    list_evaluations,
    read_evaluation,
    read_history,
    read_manifest,
    read_run_info,
    read_status,
    write_run_info,
)

FAST = {"approach": "classical", "features": "hog", "model": "logreg"}


@pytest.fixture
def data(tiny: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(tiny, copy)
    return copy


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_manifest_lists_the_exact_training_and_validation_pictures(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    pawsight.train(data, out=run, **FAST)
    manifest = read_manifest(run)
    expected = {(f.relative_to(data).as_posix(), f.parent.name, f.parts[-3]) for f in data.rglob("*.jpg")}
    assert {(m["path"], m["label"], m["split"]) for m in manifest} == expected
    assert len(manifest) == 120
    assert all(m["sha256"] == sha256(data / m["path"]) for m in manifest)


def test_evaluate_on_the_training_folder_scores_the_pictures_it_validated_on(data: Path,
                                                                             tmp_path: Path) -> None:
    run = tmp_path / "run"
    pawsight.train(data, out=run, **FAST)
    before = pawsight.evaluate(run, data, save=False)
    assert before["n_images"] == 40 and before["selection"] == "manifest"
    trained_on = sorted((data / "train" / "dogs").iterdir())
    shutil.copy(trained_on[0], data / "validation" / "cats" / "new-cat.jpg")  # a new picture, after training
    shutil.copy(trained_on[1], data / "validation" / "dogs" / "new-dog.jpg")
    after = pawsight.evaluate(run, data, save=False)
    assert after["n_images"] == 40 and after["accuracy"] == before["accuracy"]
    assert [p["path"] for p in after["predictions"]] == [p["path"] for p in before["predictions"]]
    assert after["confusion_matrix"] == before["confusion_matrix"] and after["skipped"] == []

    cats = sorted((data / "validation" / "cats").glob("cat.*"))
    cats[0].unlink()  # removed since training
    cats[1].write_bytes(trained_on[2].read_bytes())  # same name, other picture
    changed = pawsight.evaluate(run, data, save=False)
    assert changed["n_images"] == 38
    reasons = {Path(s["path"]).name: s["reason"] for s in changed["skipped"]}
    assert "no longer in the data folder" in reasons[cats[0].name]
    assert "changed since training" in reasons[cats[1].name]

    (run / "manifest.json").unlink()  # a run without its record sees the folder as it is now
    assert pawsight.evaluate(run, data, save=False)["n_images"] == 40 - 1 + 2


def test_class_folders_are_evaluated_on_the_held_out_pictures_of_training(tiny: Path, tmp_path: Path) -> None:
    data = tmp_path / "flat"
    for split in ("train", "validation"):
        for cls in ("cats", "dogs"):
            shutil.copytree(tiny / split / cls, data / cls, dirs_exist_ok=True)
    run = tmp_path / "run"
    pawsight.train(data, out=run, **FAST)
    validated = read_evaluation(run)
    shutil.copy(next((data / "dogs").iterdir()), data / "cats" / "late-addition.jpg")
    result = pawsight.evaluate(run, data, save=False)
    assert result["split"] == "validation" and result["n_images"] == validated["n_images"] == 24
    assert [p["path"] for p in result["predictions"]] == [p["path"] for p in validated["predictions"]]
    trained = read_run_info(run)["metrics"]["validation"]
    assert result["accuracy"] == validated["accuracy"] == trained["accuracy"]


def test_evaluate_returns_and_saves_one_prediction_per_picture(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    pawsight.train(tiny, out=run, **FAST)
    assert len(list_evaluations(run)) == 1  # training saved its validation evaluation
    result = pawsight.evaluate(run, tiny, split="train")
    preds = result["predictions"]
    classes = result["classes"]
    assert len(preds) == result["n_images"] == 80
    for p in preds:
        assert Path(p["path"]).is_absolute() and Path(p["path"]).parent.name == p["label"]
        assert math.isclose(sum(p["probabilities"]), 1.0, abs_tol=1e-6)
        assert p["predicted"] == classes[int(np.argmax(p["probabilities"]))]
        assert math.isclose(p["loss"], -math.log(p["probabilities"][classes.index(p["label"])]), rel_tol=1e-9)
    counts = np.zeros((2, 2), int)
    for p in preds:
        counts[classes.index(p["label"]), classes.index(p["predicted"])] += 1
    assert counts.tolist() == result["confusion_matrix"]
    assert result["accuracy"] == np.mean([p["label"] == p["predicted"] for p in preds])
    assert math.isclose(result["log_loss"], np.mean([p["loss"] for p in preds]), rel_tol=1e-9)

    saved = Path(result["saved"])
    assert saved.parent == run / "evaluations" and saved.name.startswith("cats_and_dogs_tiny-train-")
    names = list_evaluations(run)
    assert len(names) == 2 and names[-1] == saved.stem
    latest = read_evaluation(run)
    assert latest["predictions"] == preds and latest["accuracy"] == result["accuracy"]
    assert latest["split"] == "train" and read_evaluation(run, names[0])["source"] == "training"

    quiet = subprocess.run([sys.executable, "-m", "pawsight", "evaluate", str(run), str(tiny), "--no-save"],
                           capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "manifest" in quiet.stdout and list_evaluations(run) == names
    assert pawsight.evaluate(run, tiny, save=False)["saved"] is None and list_evaluations(run) == names


def test_training_saves_its_validation_evaluation_with_predictions(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _, info = pawsight.train(tiny, out=run, **FAST)
    record = read_evaluation(run)
    assert record["source"] == "training" and record["split"] == "validation"
    assert len(record["predictions"]) == 40
    assert record["accuracy"] == info["metrics"]["validation"]["accuracy"]
    assert record["confusion_matrix"] == info["metrics"]["validation"]["confusion_matrix"]
    again = pawsight.evaluate(run, tiny, save=False)  # the same pictures, scored again: the same predictions
    for a, b in zip(record["predictions"], again["predictions"], strict=True):
        assert a["path"] == b["path"] and a["predicted"] == b["predicted"]
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], rtol=1e-6)


def test_history_and_status_are_read_through_the_run_record(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "scratch"
    pawsight.train(tiny, approach="scratch", out=run, size=32, width=8, epochs=2, batch_size=16, device="cpu")
    history = read_history(run)
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(0 <= r["val_acc"] <= 1 and r["train_loss"] > 0 for r in history)
    assert read_status(run) == "done"
    classical = tmp_path / "classical"
    pawsight.train(tiny, out=classical, **FAST)
    assert read_history(classical) == []

    (run / "history.json").write_text("[{broken")
    with pytest.raises(PawsightError, match="damaged"):
        read_history(run)
    info = {k: v for k, v in read_run_info(classical).items() if k not in ("format", "pawsight_version")}
    write_run_info(classical, {**info, "status": "failed", "error": "disk full"})
    assert read_status(classical) == "failed"


def test_damaged_missing_or_foreign_records_are_one_line_errors(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    pawsight.train(tiny, out=run, **FAST)
    name = list_evaluations(run)[0]
    with pytest.raises(PawsightError, match="no evaluation named"):
        read_evaluation(run, "../run")
    path = run / "evaluations" / f"{name}.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "format": 99}))
    with pytest.raises(PawsightError, match="evaluation format 99"):
        read_evaluation(run)
    path.write_text("{")
    with pytest.raises(PawsightError, match="damaged"):
        read_evaluation(run, name)
    path.unlink()
    with pytest.raises(PawsightError, match="no saved evaluation"):
        read_evaluation(run)

    manifest = run / "manifest.json"
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**doc, "format": 99}))
    with pytest.raises(PawsightError, match="manifest format 99"):
        read_manifest(run)
    manifest.write_text(json.dumps({**doc, "pictures": [{"path": "x.jpg"}]}))
    with pytest.raises(PawsightError, match="damaged"):
        read_manifest(run)


def test_an_evaluation_that_cannot_be_saved_still_returns_its_scores(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    pawsight.train(tiny, out=run, **FAST)
    shutil.rmtree(run / "evaluations")
    (run / "evaluations").write_text("a file where the folder should be")
    result = pawsight.evaluate(run, tiny)
    assert result["n_images"] == 40 and result["saved"] is None and "evaluations" in result["save_error"]
    shown = subprocess.run([sys.executable, "-m", "pawsight", "evaluate", str(run), str(tiny)],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "note: the evaluation was not saved" in shown.stderr


def test_predictions_carry_the_label_decision_given_to_them() -> None:
    from pawsight.evaluation import picture_predictions

    proba = np.array([[0.9, 0.1], [0.4, 0.6]])
    default = picture_predictions([Path("a.jpg"), Path("b.jpg")], np.array([0, 0]), proba, ["cats", "dogs"])
    assert [p["predicted"] for p in default] == ["cats", "dogs"]
    assert math.isclose(default[1]["loss"], -math.log(0.4))
    decided = picture_predictions([Path("a.jpg"), Path("b.jpg")], np.array([0, 0]), proba, ["cats", "dogs"],
                                  predicted=["cats", "unknown"])
    assert [p["predicted"] for p in decided] == ["cats", "unknown"]
