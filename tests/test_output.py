"""What pawsight prints: names from the user's folders never reach the terminal raw (no escape sequences, no
forged lines), JSON keeps them exact, and the exit statuses mean one thing each (README "Exit statuses")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pawsight import cli
from pawsight.cli import main
from pawsight.errors import EXIT_BUG, EXIT_SKIPPED, EXIT_USAGE

EVIL = "\x1b]0;pwned\x07\x1b[31mcats\nerror: forged"
RAW = ("\x1b", "\x07", "\x9b")


@pytest.fixture(scope="module")
def evil_data(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cats in a folder whose name sets the terminal title, turns the text red and forges an error line;
    file names with a clear-screen escape; one unreadable file whose name forges a line too."""
    data = tmp_path_factory.mktemp("evil") / "data"
    for cls, name in (("cats", EVIL), ("dogs", "dogs")):
        (data / name).mkdir(parents=True)
        for f in sorted((tiny / "train" / cls).iterdir())[:12]:
            shutil.copy(f, data / name / (("\x1b[2J" if cls == "cats" else "") + f.name))
    (data / EVIL / "bad\nerror: forged.jpg").write_bytes(b"not a picture")
    return data


@pytest.fixture(scope="module")
def evil_run(evil_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("evil-run") / "run"
    assert main(["train", str(evil_data), "--approach", "classical", "--features", "hog", "--size", "64",
                 "--model", "logreg", "--out", str(run)]) == EXIT_SKIPPED  # the bad file was skipped
    return run


def assert_clean(text: str) -> None:
    assert not any(c in text for c in RAW), text
    assert not any(line.startswith("error: forged") for line in text.splitlines()), text


def test_names_are_escaped_in_every_human_readable_output(evil_data: Path, evil_run: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    for argv, status in [(["data", "inspect", str(evil_data), "--sheet", str(evil_run.parent / "s.png")], 0),
                         (["train", str(evil_data), "--approach", "classical", "--features", "hog",
                           "--size", "64", "--model", "logreg", "--out", str(evil_run.parent / "again")],
                          EXIT_SKIPPED),
                         (["evaluate", str(evil_run), str(evil_data), "--split", "all"], EXIT_SKIPPED),
                         (["predict", str(evil_run), str(evil_data), "--top-k", "2"], EXIT_SKIPPED),
                         (["predict", str(evil_run), str(evil_data / EVIL / "nope.jpg"), str(evil_data)],
                          EXIT_SKIPPED)]:
        assert main(argv) == status, argv
        captured = capsys.readouterr()
        assert_clean(captured.out)
        assert_clean(captured.err)
        assert "\\x1b]0;pwned\\x07\\x1b[31mcats\\nerror: forged" in captured.out + captured.err, argv
    # a PawsightError naming the folder is one line too
    assert main(["evaluate", str(evil_run), str(evil_data / EVIL)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert_clean(err)
    assert len(err.splitlines()) == 1 and err.startswith("error: ")


def test_json_outputs_keep_the_exact_names(evil_data: Path, evil_run: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    main(["predict", str(evil_run), str(evil_data), "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # one object per picture
    answered = [r for r in rows if "error" not in r]
    assert {p["label"] for p in answered} <= {EVIL, "dogs", "unknown"}
    assert any(p["path"].startswith(str(evil_data / EVIL / "\x1b[2J")) for p in answered)
    assert [r["path"] for r in rows if "error" in r] == [str(evil_data / EVIL / "bad\nerror: forged.jpg")]
    main(["data", "inspect", str(evil_data), "--json", "--sheet", str(evil_run.parent / "s.png")])
    assert EVIL in json.loads(capsys.readouterr().out)["classes"]


def test_a_subprocess_terminal_sees_no_escape_sequences(evil_data: Path, evil_run: Path) -> None:
    """The same through a real process and pipes (what a terminal would receive), progress bars on."""
    result = subprocess.run([sys.executable, "-m", "pawsight", "predict", str(evil_run), str(evil_data)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PAWSIGHT_PROGRESS": "1"})
    assert result.returncode == EXIT_SKIPPED
    assert_clean(result.stdout)
    assert_clean(result.stderr)


def test_predict_on_a_folder_without_pictures_says_so(evil_run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    assert main(["predict", str(evil_run), str(tmp_path / "empty")]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == f"error: no pictures found in {tmp_path / 'empty'}"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.jpg").write_text("not a picture")
    assert main(["predict", str(evil_run), str(tmp_path / "junk")]) == EXIT_USAGE
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("skipped ") and err[1].startswith("error: none of the 1 file(s)")


def test_an_unexpected_error_is_exit_3_not_the_skipped_status(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A bug inside pawsight (simulated: nothing a user does triggers one) says so, with the log file."""
    def broken(args):
        raise RuntimeError("an invariant broke")

    monkeypatch.setattr(cli, "run_command", broken)
    monkeypatch.delenv("PAWSIGHT_DEBUG", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["cache", "info"]) == EXIT_BUG == 3
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected RuntimeError inside pawsight: an invariant broke") and \
        "please report it" in err
    assert "invariant broke" in next(tmp_path.glob("pawsight-error-*.log")).read_text()
