"""The command line as a user meets it: clear one-line errors, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clitools import pawsight as run_cli
from pawsight.cli import main, parse_duration
from pawsight.errors import PawsightError
from pawsight.run import read_run_info, write_run_info


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("1h30m", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_set_params_are_typed() -> None:
    from pawsight.cli import parse_set_params

    assert parse_set_params(["pca=256", "C=0.5", "flip=false", "model=knn", "weights=none"]) == {
        "pca": 256, "C": 0.5, "flip": False, "model": "knn", "weights": None}
    with pytest.raises(PawsightError, match="NAME=VALUE"):
        parse_set_params(["pca"])


def test_parse_duration_rejects_garbage() -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("ten minutes")


def test_missing_data_folder_is_one_line_error(tmp_path: Path) -> None:
    result = run_cli("train", str(tmp_path / "nope"), "--approach", "classical",
                     "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: data folder not found")


def test_single_class_is_clear_error(tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cats").mkdir()
    shutil.copy(sorted((tiny / "train" / "cats").iterdir())[0], tmp_path / "cats")
    (tmp_path / "dogs").mkdir()  # no pictures: not a class, and named in the error
    assert main(["data", "inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "only one class" in err and "not used: dogs (no pictures" in err


def test_evaluate_on_missing_run_is_clear_error(tmp_path: Path, tiny: Path) -> None:
    result = run_cli("evaluate", str(tmp_path / "norun"), str(tiny))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "run directory not found" in result.stderr


def test_run_info_refuses_damaged_and_future_formats(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(PawsightError, match="no run.json"):
        read_run_info(run)
    (run / "run.json").write_text("{not json")
    with pytest.raises(PawsightError, match="damaged"):
        read_run_info(run)
    write_run_info(run, {"approach": "classical", "classes": ["a", "b"]})
    assert read_run_info(run)["classes"] == ["a", "b"]
    info = json.loads((run / "run.json").read_text())
    info["format"] = 99
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(PawsightError, match="run format 99"):
        read_run_info(run)


def test_unknown_approach_option_is_clear_error(tmp_path: Path, tiny: Path) -> None:
    result = run_cli("train", str(tiny), "--approach", "classical", "--epochs", "3",
                     "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has no option(s) epochs" in result.stderr


def test_unknown_set_param_lists_accepted_ones(tmp_path: Path, tiny: Path) -> None:
    result = run_cli("train", str(tiny), "--approach", "classical", "--set", "gamma=2",
                     "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has no option(s) gamma" in result.stderr and "pca" in result.stderr
