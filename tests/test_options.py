"""Bad option values are refused with one line (exit status 2) before anything runs; limits shared by the
command line, `--set NAME=VALUE` and the Python API (pawsight.options)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clitools import error_line
from pawsight.cli import main
from pawsight.errors import PawsightError
from pawsight.models.base import make_model

one_error_line = error_line  # this file passes stderr


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of a command refused while its arguments are parsed (exit status 2)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return one_error_line(captured.err)


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--epochs", "0", "at least 1"), ("--epochs", "-5", "at least 1"), ("--epochs", "2.5", "whole number"),
    ("--val-fraction", "-1", "at least 0"), ("--val-fraction", "1", "less than 1"),
    ("--val-fraction", "nan", "finite"), ("--size", "8", "at least 16"), ("--size", "5000", "at most 1024"),
    ("--batch-size", "0", "at least 1"), ("--lr", "0", "greater than 0"), ("--lr", "inf", "finite"),
    ("--lr", "-1e-3", "greater than 0"), ("--lr", "NaN", "finite"), ("--time-budget", "0", "greater than 0"),
    ("--time-budget", "0s", "greater than 0"), ("--time-budget", "soon", "not a duration"),
    ("--seed", "-1", "at least 0"), ("--seed", "4294967296", "at most 4294967295"), ("--seed", "x", "number"),
])
def test_train_refuses_bad_numbers_at_parse_time(option: str, value: str, says: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(["train", str(tmp_path), "--out", str(tmp_path / "run"), f"{option}={value}"], capsys)
    assert option in line and says in line
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("argv", [
    ["predict", "RUN", "x.jpg", "--top-k", "0"], ["predict", "RUN", "x.jpg", "--top-k=-5"],
    ["data", "inspect", "DATA", "--size", "3"], ["data", "inspect", "DATA", "--val-fraction", "1.5"],
    ["data", "inspect", "DATA", "--seed=-2"],
])
def test_other_commands_refuse_bad_numbers(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert "must be" in usage_error(argv, capsys)


def test_argparse_usage_mistakes_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert "invalid choice" in usage_error(["bogus"], capsys)
    assert "required" in usage_error([], capsys)
    assert "unrecognized arguments" in usage_error(["cache", "info", "--bogus"], capsys)
    assert "invalid choice" in usage_error(["train", "DATA", "--approach", "quantum"], capsys)


@pytest.mark.parametrize(("approach", "params", "says"), [
    ("scratch", {"width": 2}, "width must be at least 4"),
    ("scratch", {"depth": 1.5}, "depth must be a whole number"),
    ("scratch", {"size": "abc"}, "size must be a number"),
    ("scratch", {"crop": 4}, "crop must be at least 16"),
    ("scratch", {"epochs": 0}, "epochs must be at least 1"),
    ("scratch", {"lr": float("nan")}, "lr must be a finite number"),
    ("scratch", {"weight_decay": -1}, "weight_decay must be at least 0"),
    ("scratch", {"mode": "zoom"}, "unknown resize mode"),
    ("classical", {"C": float("inf")}, "C must be a finite number"),
    ("classical", {"C": 0}, "C must be greater than 0"),
    ("classical", {"pca": -1}, "pca must be"),
    ("classical", {"pca": float("nan")}, "pca must be"),
    ("classical", {"pca": True}, "pca must be"),
    ("classical", {"pca": 1.5}, "fractional pca"),
    ("classical", {"n_jobs": 0}, "n_jobs"),
    ("classical", {"size": 4096}, "size must be at most 1024"),
    ("classical", {"search_budget": -1}, "search_budget must be at least 0"),
    ("classical", {"features": "hog,bogus"}, "unknown feature"),
    ("classical", {"model": "deep-svm"}, "unknown classical model"),
    ("transfer", {"epochs": -3}, "epochs must be at least 1"),
    ("transfer", {"batch_size": 0}, "batch_size must be at least 1"),
    ("transfer", {"time_budget": float("-inf")}, "time_budget must be a finite number"),
    ("transfer", {"mode": "bogus"}, "unknown transfer mode"),
    ("transfer", {"seed": -1}, "seed must be at least 0"),
])
def test_every_models_parameters_are_checked_when_made(approach: str, params: dict, says: str) -> None:
    with pytest.raises(PawsightError, match=says):
        make_model(approach, **params)


def test_set_values_get_the_same_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    for approach, setting, says in [("scratch", "width=2", "width must be at least 4"),
                                    ("classical", "C=nan", "C must be a finite number"),
                                    ("transfer", "epochs=0", "epochs must be at least 1")]:
        assert main(["train", str(data), "--approach", approach, "--out", str(out),
                     "--set", setting]) == 2
        assert says in one_error_line(capsys.readouterr().err)
        assert not out.exists()


def test_val_fraction_zero_trains_on_everything_and_top_k_beyond_the_classes_shows_all(
        tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"  # a class-folder layout (not pre-split) from the tiny set's training pictures
    shutil.copytree(tiny / "train", data)
    run = tmp_path / "run"
    assert main(["train", str(data), "--approach", "classical", "--features", "hog", "--size", "64",
                 "--model", "logreg", "--val-fraction", "0", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    n = sum(1 for p in data.rglob("*") if p.is_file())
    assert f"train {n} pictures" in out and "validation accuracy" not in out
    picture = next((data / "cats").iterdir())
    assert main(["predict", str(run), str(picture), "--top-k", "5"]) == 0
    fields = capsys.readouterr().out.strip().split("\t")
    assert len(fields) == 4 and {fields[1], fields[3].split()[0]} == {"cats", "dogs"}
