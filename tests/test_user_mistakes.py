"""Ordinary mistakes a user makes get ONE clear line (`error: ...`, exit status 2): never a traceback, never
"unexpected ... please report it" (that is reserved for bugs in pawsight, exit status 3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from clitools import pawsight
from pawsight.cli import main


def assert_one_error_line(err: str, status: int, expected: int = 2, says: str = "") -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == expected, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for bad in ("Traceback", "unexpected", "please report"):
        assert bad not in err, err
    assert says in lines[0], err


@pytest.fixture(scope="module")
def ws(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A workspace: a trained classical run (small and quick), a copy of it to damage, and odd paths."""
    root = tmp_path_factory.mktemp("mistakes")
    run = root / "run"
    assert main(["train", str(tiny), "--approach", "classical", "--features", "hog", "--size", "64",
                 "--model", "logreg", "--out", str(run)]) == 0
    (root / "plain").mkdir()                        # a folder that is neither data nor a run
    (root / "notes.txt").write_text("my notes\n")   # a file where a folder is expected
    (root / "flat").mkdir()                         # pictures but no class folders
    shutil.copy(next((tiny / "train" / "cats").iterdir()), root / "flat" / "cat.jpg")
    (root / "onecls" / "cats").mkdir(parents=True)  # a single class
    shutil.copy(next((tiny / "train" / "cats").iterdir()), root / "onecls" / "cats" / "cat.jpg")
    (root / "weights.pth").write_bytes(b"this is not a weights file")
    (root / "config.json").write_text("{not json")
    return {"root": root, "run": run, "tiny": tiny}


def damaged_run(ws: dict[str, Path], name: str) -> Path:
    """A fresh copy of the trained run, to damage."""
    target = ws["root"] / f"damaged-{name}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ws["run"], target)
    return target


def cases(ws: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    r, run, tiny = ws["root"], str(ws["run"]), str(ws["tiny"])
    o = str(r / "o")  # replaced by a fresh folder per case
    train = ["train", "--approach", "classical", "--features", "hog", "--size", "64"]
    return [
        # data folders
        ("train: data folder missing", [*train, str(r / "nope"), "--out", o], "not found"),
        ("train: a file as data folder", [*train, str(r / "notes.txt"), "--out", o], "not a folder"),
        ("train: no class folders", [*train, str(r / "flat"), "--out", o], "no class folders"),
        ("train: empty folder", [*train, str(r / "plain"), "--out", o], "no class folders"),
        ("train: one class", [*train, str(r / "onecls"), "--out", o], "class"),
        ("train: no data given", ["train", "--approach", "classical"], "data folder"),
        # the run directory to write
        ("train: --out under /proc", [*train, tiny, "--out", "/proc/pawsight-run"], "cannot write"),
        ("train: --out is a file", [*train, tiny, "--out", str(r / "notes.txt")], "is a file"),
        ("train: --out below a file", [*train, tiny, "--out", str(r / "notes.txt" / "run")],
         "a file is in the way"),
        ("train: --resume a plain folder", ["train", "--resume", str(r / "plain")], "nothing to resume"),
        ("train: --resume a file", ["train", "--resume", str(r / "notes.txt")], "nothing to resume"),
        ("train: --resume a finished run", ["train", "--resume", run], "finished"),
        # transfer weights
        ("train: --weights not weights", ["train", tiny, "--weights", str(r / "weights.pth"),
                                          "--out", o], "weights"),
        ("train: --weights is JSON", ["train", tiny, "--weights", str(r / "config.json"),
                                      "--out", o], "weights"),
        ("train: --weights missing", ["train", tiny, "--weights", str(r / "nope.pth"),
                                      "--out", o], "not found"),
        ("train: unknown --set name", [*train, tiny, "--out", o, "--set", "colour=1"], "no option"),
        ("train: --set without =", [*train, tiny, "--out", o, "--set", "pca"], "NAME=VALUE"),
        # runs that are not runs
        ("evaluate: a plain folder as run", ["evaluate", str(r / "plain"), tiny], "not a finished"),
        ("evaluate: a file as run", ["evaluate", str(r / "notes.txt"), tiny], str(r / "notes.txt")),
        ("evaluate: run missing", ["evaluate", str(r / "nope"), tiny], "not found"),
        ("evaluate: data folder as run", ["evaluate", tiny, tiny], "folder of pictures, not a trained run"),
        ("predict: data folder as run", ["predict", tiny, str(r / "flat")], "--out runs/NAME"),
        ("evaluate: data missing", ["evaluate", run, str(r / "nope")], "not found"),
        ("evaluate: a file as data", ["evaluate", run, str(r / "notes.txt")], "not a folder"),
        ("evaluate: unknown split", ["evaluate", run, tiny, "--split", "holdout"], "unknown split"),
        # predict
        ("predict: image missing", ["predict", run, str(r / "nope.jpg")], "no such file"),
        ("predict: folder without pictures", ["predict", run, str(r / "plain")], "no pictures"),
        ("predict: run missing", ["predict", str(r / "nope"), str(r / "flat")], "not found"),
        # data and cache commands
        ("inspect: a file as data", ["data", "inspect", str(r / "notes.txt")], "not a folder"),
        ("inspect: folder missing", ["data", "inspect", str(r / "nope")], "not found"),
        ("cache clear: unknown part", ["cache", "clear", "everything"], "unknown cache part"),
        ("download: unknown data set", ["data", "download", "dogs-vs-cats-xl"], "unknown data set"),
    ]


def damaged_cases(ws: dict[str, Path]) -> list[tuple[str, Path, str]]:
    """(what, damaged run, expected words) for run directories damaged in ordinary ways."""
    out = []
    for name, damage, says in [
        ("run.json not JSON", lambda d: (d / "run.json").write_text("{not json"), "damaged"),
        ("run.json a list", lambda d: (d / "run.json").write_text("[1, 2]"), "not a pawsight run"),
        ("model.json not JSON", lambda d: (d / "model.json").write_text("{oops"), "damaged"),
        ("model.safetensors missing", lambda d: (d / "model.safetensors").unlink(), "missing"),
        ("model.safetensors replaced", lambda d: (d / "model.safetensors").write_bytes(b"x" * 100),
         "does not match"),
        ("model.json missing", lambda d: (d / "model.json").unlink(), "missing"),
        ("run.json is a folder", lambda d: ((d / "run.json").unlink(), (d / "run.json").mkdir()), ""),
    ]:
        d = damaged_run(ws, name.replace(" ", "-").replace(".", "-"))
        damage(d)
        out.append((name, d, says))
    return out


def test_every_ordinary_mistake_is_one_line(ws: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    for i, (what, argv, says) in enumerate(cases(ws)):
        argv = [str(ws["root"] / f"out-{i}") if a == str(ws["root"] / "o") else a for a in argv]
        status = main(argv)
        captured = capsys.readouterr()
        assert_one_error_line(captured.err, status, says=says), what


def test_damaged_run_directories_are_one_line(ws: dict[str, Path], tiny: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    picture = next((tiny / "validation" / "dogs").iterdir())
    for what, run, says in damaged_cases(ws):
        for argv in (["predict", str(run), str(picture)], ["evaluate", str(run), str(tiny)]):
            status = main(argv)
            assert_one_error_line(capsys.readouterr().err, status, says=says), (what, argv)


def run_cli(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return pawsight(*args, prefix=prefix)


def test_mistakes_through_a_real_process(ws: dict[str, Path]) -> None:
    r, run = ws["root"], str(ws["run"])
    for argv, says in [(["predict", run, str(r / "nope.jpg")], "no such file"),
                       (["evaluate", str(r / "plain"), str(ws["tiny"])], "not a finished pawsight run"),
                       (["train", str(ws["tiny"]), "--approach", "classical", "--out", "/proc/x/run"],
                        "cannot write"),
                       (["train", str(ws["tiny"]), "--epochs", "0"], "--epochs")]:
        result = run_cli(*argv)
        assert_one_error_line(result.stderr, result.returncode, says=says)
        assert result.stdout == ""


def without_root_powers() -> list[str]:
    """A command prefix under which file permissions apply (root ignores them): capsh dropping the
    capabilities that bypass them. Skips when that is not possible."""
    if os.geteuid() != 0:
        return []
    capsh = shutil.which("capsh")
    if capsh is None:
        pytest.skip("running as root without capsh: file permissions cannot be made to apply")
    prefix = [capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", 'exec "$0" "$@"']
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop root's file capabilities here: {probe.stderr!r}")
    return prefix


def test_unreadable_folders_and_files_are_one_line(ws: dict[str, Path], tiny: Path) -> None:
    prefix = without_root_powers()
    locked_data = ws["root"] / "locked-data"
    shutil.copytree(tiny / "train", locked_data)
    locked_run = damaged_run(ws, "locked")
    locked_model = damaged_run(ws, "locked-model")
    picture = str(next((tiny / "validation" / "cats").iterdir()))
    try:
        locked_data.chmod(0)
        locked_run.chmod(0)
        (locked_model / "model.safetensors").chmod(0)
        # an unreadable data folder: data.py lists it as holding no class folders (one line, but it does not
        # say why; the data layer's wording)
        for argv in (["train", str(locked_data), "--approach", "classical", "--out", str(ws["root"] / "o")],
                     ["data", "inspect", str(locked_data)]):
            result = run_cli(*argv, prefix=prefix)
            assert_one_error_line(result.stderr, result.returncode, says=str(locked_data))
        for argv in (["predict", str(locked_run), picture], ["evaluate", str(locked_run), str(tiny)],
                     ["predict", str(locked_model), picture]):
            result = run_cli(*argv, prefix=prefix)
            assert_one_error_line(result.stderr, result.returncode, says="ermission denied")
    finally:
        locked_data.chmod(0o755)
        locked_run.chmod(0o755)
        (locked_model / "model.safetensors").chmod(0o644)


def test_a_read_only_run_parent_is_one_line(ws: dict[str, Path], tiny: Path) -> None:
    prefix = without_root_powers()
    parent = ws["root"] / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        result = run_cli("train", str(tiny), "--approach", "classical", "--out", str(parent / "run"),
                         prefix=prefix)
        assert_one_error_line(result.stderr, result.returncode, says="cannot write the run directory")
    finally:
        parent.chmod(0o755)


def test_json_run_info_of_the_run_is_intact(ws: dict[str, Path]) -> None:
    """The fixture's run really is a finished run (so the damaged copies above test damage, not luck)."""
    assert json.loads((ws["run"] / "run.json").read_text())["status"] == "done"


@pytest.mark.parametrize("approach", ["transfer", "scratch"])
def test_a_missing_gpu_is_refused_before_any_picture_is_decoded(approach: str, tiny: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cache = tmp_path / "cache"
    monkeypatch.setenv("PAWSIGHT_CACHE", str(cache))
    argv = ["train", str(tiny), "--approach", approach, "--device", "cuda", "--out", str(tmp_path / "r")]
    status = main(argv)
    assert_one_error_line(capsys.readouterr().err, status, says="no CUDA GPU")
    assert not (cache / "pixels").exists()  # refused before decoding
