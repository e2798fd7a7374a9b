"""Files pawsight reads back from a run directory (run.json, history.json, evaluations/*.json, the weights)
are checked by one loader per kind of file: a hand edit or a file from another run is one line naming the
file and the field, exit status 2, for every command alike (issue 14, items 10 and 13).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import pawsight
from pawsight import api
from pawsight.cli import main
from pawsight.errors import PawsightError


def one_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    status = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 2, (argv, captured.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "please report" not in lines[0]
    return lines[0]


def copy_run(run: Path, tmp_path: Path, name: str = "run") -> Path:
    out = tmp_path / name
    shutil.copytree(run, out)
    return out


def edit_json(path: Path, edit: Callable[[object], object]) -> None:
    doc = json.loads(path.read_text())
    result = edit(doc)
    path.write_text(json.dumps(doc if result is None else result))


def test_history_with_a_string_epoch_is_one_line(scratch_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(scratch_run, tmp_path)
    edit_json(run / "history.json", lambda h: h[0].update(epoch="one"))
    for command in (["plot", str(run)], ["report", str(run), "--no-explain", "--top-k", "0"]):
        line = one_error(command, capsys)
        assert "history.json is damaged: epoch must be a whole number" in line
    edit_json(run / "history.json", lambda h: h[0].update(epoch=1, val_loss="low"))
    assert "val_loss must be a number" in one_error(["plot", str(run)], capsys)


@pytest.mark.parametrize(("edit", "says"), [
    (lambda info: info.update(preprocessing={"size": "big"}), "preprocessing is invalid"),
    (lambda info: info.update(seed="x"), "seed must be a whole number"),
    (lambda info: info.update(classes="cats,dogs"), "classes must be a list"),
    (lambda info: info.update(metrics={"validation": {"accuracy": "high"}}), "accuracy must be a number"),
    (lambda info: info.update(data={"root": 7}), "root must be a folder path"),
])
def test_every_command_reads_run_json_through_one_loader(classical_run: Path, tiny: Path, tmp_path: Path,
                                                         edit: Callable, says: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """predict, evaluate, serve and report refuse the same edit with the same line (before, predict and
    evaluate used whatever report refused)."""
    from pawsight.serve.app import create_app

    run = copy_run(classical_run, tmp_path)
    edit_json(run / "run.json", edit)
    picture = next((tiny / "validation" / "cats").glob("*.jpg"))
    lines = {one_error(argv, capsys) for argv in (["predict", str(run), str(picture)],
                                                  ["evaluate", str(run), str(tiny), "--no-save"],
                                                  ["report", str(run), "--no-explain"])}
    assert len(lines) == 1, lines
    [line] = lines
    assert "run.json is damaged" in line and says in line
    with pytest.raises(PawsightError, match="run.json is damaged"):
        create_app(run)


def test_a_swapped_model_json_and_weights_pair_is_refused(classical_run: Path, tiny: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """model.json records its weights' SHA-256, so the pair from another run (same classes) matched itself;
    run.json's record of the weights catches it."""
    other = tmp_path / "other"
    api.train(tiny, approach="classical", out=other, features="color", model="knn", size=32)
    run = copy_run(classical_run, tmp_path)
    assert json.loads((run / "run.json").read_text())["weights_sha256"]
    for name in ("model.json", "model.safetensors"):
        shutil.copy(other / name, run / name)
    picture = next((tiny / "validation" / "dogs").glob("*.jpg"))
    line = one_error(["predict", str(run), str(picture)], capsys)
    assert "model.safetensors is not the model this run trained" in line
    with pytest.raises(PawsightError, match="not the model this run trained"):
        pawsight.load(run)


def test_a_damaged_saved_evaluation_is_one_line(classical_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(classical_run, tmp_path)
    [saved] = sorted((run / "evaluations").glob("*.json"))
    edit_json(saved, lambda e: e["predictions"][0].update(probabilities="certain"))
    line = one_error(["plot", str(run)], capsys)
    assert f"{saved.name} is damaged: prediction 0: probabilities must be 2 numbers" in line


def test_an_impossible_pca_is_refused_not_clamped(tiny: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(["train", str(tiny), "--approach", "classical", "--features", "color", "--size", "32",
                      "--model", "logreg", "--out", str(tmp_path / "run"), "--set", "pca=100000"], capsys)
    assert "pca must be between 1 and" in line and "got 100000" in line


def test_the_python_api_checks_the_same_limits(classical_run: Path, scratch_run: Path, tiny: Path) -> None:
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(PawsightError, match="threshold must be"):
            pawsight.load(scratch_run, threshold=bad)
    with pytest.raises(PawsightError, match="top_k must be at least 1"):
        api.predict(classical_run, [tiny], top_k=0)
    from pawsight.choose import advise

    with pytest.raises(PawsightError, match="val_fraction must be less than 1"):
        advise(tiny, val_fraction=1.5)
