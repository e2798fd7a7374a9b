"""The run directory as a user meets it (issue 7): `--overwrite` never removes what pawsight did not write,
`--out` never overlaps the data folder, one training at a time per run directory (an OS lock that a kill -9
does not leave stale), a failed training can be run again, and `--resume` restores every training option."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pawsight
from clitools import one_error_line
from clitools import pawsight as cli
from pawsight.errors import PawsightError
from pawsight.run import load_model, read_run_info, write_run_info

FAST = ["--approach", "classical", "--features", "hog", "--model", "logreg"]
FAST_PARAMS = {"approach": "classical", "features": "hog", "model": "logreg"}


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry below `folder` (folders too) with the SHA-256 of each file: proves nothing was touched."""
    out = {}
    for p in sorted(q for q in folder.rglob("*") if q.name != ".lock"):  # the pid of the last writer
        rel = p.relative_to(folder).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture
def data(tiny: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny set: tests that could destroy a data folder never touch the shared one."""
    copy = tmp_path / "data"
    shutil.copytree(tiny, copy)
    return copy


# -- --overwrite removes only a pawsight run, and only what pawsight wrote --------------------------------

def test_overwrite_refuses_a_folder_that_is_not_a_run(tiny: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    (notes / "drafts").mkdir(parents=True)
    (notes / "todo.txt").write_text("my own notes")
    (notes / "drafts" / "a.txt").write_text("more")
    before = snapshot(notes)
    for flags in (["--overwrite"], []):
        line = one_error_line(cli("train", tiny, *FAST, "--out", notes, *flags))
        assert "not a pawsight run" in line and "todo.txt" in line
        assert snapshot(notes) == before


def test_without_overwrite_a_folder_of_user_files_is_refused_and_an_empty_one_is_used(tiny: Path,
                                                                                      tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.json").write_text('{"my": "own model description"}')
    before = snapshot(mine)
    line = one_error_line(cli("train", tiny, *FAST, "--out", mine))
    assert "not a pawsight run" in line and "model.json" in line
    assert snapshot(mine) == before

    empty = tmp_path / "empty"
    empty.mkdir()
    _, info = pawsight.train(tiny, out=empty, **FAST_PARAMS)
    assert info["status"] == "done" and read_run_info(empty)["status"] == "done"


def test_overwrite_keeps_user_files_in_a_run_directory(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    pawsight.train(tiny, out=run, **FAST_PARAMS)
    (run / "notes.txt").write_text("my notes about this run")
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "readme.md").write_text("mine too")
    before = snapshot(run)
    line = one_error_line(cli("train", tiny, *FAST, "--out", run, "--overwrite"))
    assert "did not write" in line and "notes.txt" in line and "checkpoint/readme.md" in line
    assert snapshot(run) == before
    assert load_model(run).classes_ == ["cats", "dogs"]

    (run / "notes.txt").unlink()
    shutil.rmtree(run / "checkpoint")
    (run / ".run.json.abc123.tmp").write_text("{")  # a write killed midway: pawsight's own leftover
    result = cli("train", tiny, *FAST, "--out", run, "--overwrite", "--seed", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_run_info(run)["seed"] == 1 and not (run / ".run.json.abc123.tmp").exists()


@pytest.mark.parametrize("mine", ["plots/mine.html", "plots/summary.json", "evaluations/my-notes.json",
                                  "plots/confusion-matrix.png", "report.html"])
def test_overwrite_refuses_user_files_under_pawsights_folders_and_names(tiny: Path, tmp_path: Path,
                                                                        mine: str) -> None:
    """Issue 14.4: the allow-list was wider than what pawsight writes: a user's page, JSON or PNG in plots/ or
    evaluations/ (or a report.html pawsight did not write) was removed by --overwrite. Now it is refused, byte
    for byte kept; pawsight's own plots, evaluations and report are still replaced."""
    run = tmp_path / "run"
    pawsight.train(tiny, out=run, **FAST_PARAMS)
    pawsight.evaluate(run, tiny)
    assert cli("plot", run).returncode == 0 and cli("report", run, "--top-k", "0").returncode == 0
    (run / mine).parent.mkdir(exist_ok=True)
    if (run / mine).exists():
        (run / mine).unlink()  # pawsight's file of that name, replaced by the user's own
    (run / mine).write_bytes(b"<html>the user's own work</html>")
    before = snapshot(run)
    line = one_error_line(cli("train", tiny, *FAST, "--out", run, "--overwrite"))
    assert "did not write" in line and mine in line
    assert snapshot(run) == before

    (run / mine).unlink()
    result = cli("train", tiny, *FAST, "--out", run, "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    # only the new run's own files: its learning curve, its validation evaluation
    assert [p.name for p in (run / "plots").glob("*")] == ["learning-curve.png"]
    assert list((run / "evaluations").glob("*.json"))


def test_refused_or_failed_start_leaves_nothing_behind(tiny: Path, tmp_path: Path) -> None:
    """Issue 14.13: a refused --overwrite left RUN/.lock in the user's folder; a bad --model left an empty
    run folder."""
    run = tmp_path / "run"
    pawsight.train(tiny, out=run, **FAST_PARAMS)
    (run / ".lock").unlink()
    (run / "notes.txt").write_text("mine")
    one_error_line(cli("train", tiny, *FAST, "--out", run, "--overwrite"))
    assert not (run / ".lock").exists()

    fresh = tmp_path / "fresh"
    line = one_error_line(cli("train", tiny, "--model", "no-such-backbone", "--out", fresh))
    assert "no-such-backbone" in line and not fresh.exists()


@pytest.mark.parametrize("where", ["equal", "inside", "contains", "symlink"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_out_overlapping_the_data_folder_is_refused(data: Path, tmp_path: Path, where: str,
                                                    overwrite: bool) -> None:
    link = tmp_path / "link"
    link.symlink_to(data, target_is_directory=True)
    out = {"equal": data, "inside": data / "runs" / "r", "contains": tmp_path, "symlink": link}[where]
    before = snapshot(data)
    with pytest.raises(PawsightError, match="data folder"):
        pawsight.train(data, out=out, overwrite=overwrite, **FAST_PARAMS)
    assert snapshot(data) == before and link.is_symlink()


def test_out_inside_the_data_folder_is_one_line_on_the_command_line(data: Path) -> None:
    line = one_error_line(cli("train", data, *FAST, "--out", data / "runs", "--overwrite"))
    assert "is inside the data folder" in line
    assert not (data / "runs").exists()


# -- two trainings with the same --out ---------------------------------------------------------------------

SCRATCH = ["--approach", "scratch", "--size", "32", "--set", "width=8", "--batch-size", "16",
           "--device", "cpu"]


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_killed_one_does_not_block(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "pawsight", "train", str(tiny), *SCRATCH, "--epochs",
                              "1000", "--out", str(run)], env={**os.environ, "PAWSIGHT_PROGRESS": "0"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        state = run / "checkpoint" / "state.json"
        deadline = time.monotonic() + 120
        while not state.is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.is_file(), first.communicate(timeout=30)[1][-2000:]
        for flags in ([], ["--overwrite"]):
            line = one_error_line(cli("train", tiny, *FAST, "--out", run, *flags))
            assert f"is being written by another pawsight process (pid {first.pid})" in line
        assert read_run_info(run)["approach"] == "scratch" and first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert read_run_info(run)["status"] == "training"
    # the lock died with the process; what it left is a resumable run, so the same command says so
    line = one_error_line(cli("train", tiny, *SCRATCH, "--epochs", "1000", "--out", run))
    assert "did not finish" in line and f"pawsight train --resume {run}" in line
    result = cli("train", tiny, *FAST, "--out", run, "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    info = read_run_info(run)
    assert info["status"] == "done" and info["approach"] == "classical"
    assert not (run / "checkpoint").exists() and not (run / "history.json").exists()


# -- a failed training ------------------------------------------------------------------------------------

def test_a_failed_training_is_recorded_and_the_same_command_runs_again(data: Path, tmp_path: Path) -> None:
    dogs = data / "train" / "dogs"
    saved = tmp_path / "dogs"
    shutil.copytree(dogs, saved)
    for f in dogs.iterdir():
        f.write_bytes(b"not a picture")
    run = tmp_path / "run"
    command = ["train", data, *FAST, "--out", run]
    line = one_error_line(cli(*command))
    assert "fewer than two classes" in line
    info = read_run_info(run)
    assert info["status"] == "failed" and "fewer than two classes" in info["error"]
    with pytest.raises(PawsightError, match="failed .*fewer than two classes.*run the train command again"):
        load_model(run)

    shutil.rmtree(dogs)
    shutil.copytree(saved, dogs)  # the user fixes the data and runs the same command
    result = cli(*command)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "replaced the unfinished run" in result.stderr
    assert read_run_info(run)["status"] == "done" and "error" not in read_run_info(run)


def test_an_unexpected_failure_is_recorded_with_its_type(tiny: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from pawsight.models.classical import ClassicalClassifier

    def disk_full(*args, **kwargs):  # fault injection: the disk fills up while features are cached
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ClassicalClassifier, "fit", disk_full)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space left"):
        pawsight.train(tiny, out=run, **FAST_PARAMS)
    info = read_run_info(run)
    assert info["status"] == "failed" and info["error"] == "OSError: [Errno 28] No space left on device"
    monkeypatch.undo()
    _, info = pawsight.train(tiny, out=run, **FAST_PARAMS)  # same call again: replaces the failed run
    assert info["status"] == "done"


# -- resume restores every option ----------------------------------------------------------------------------

def test_resume_restores_drop_duplicates_and_the_other_options(data: Path, tmp_path: Path) -> None:
    cats = sorted((data / "train" / "cats").iterdir())
    shutil.copy(cats[0], cats[0].with_name("copy-of-" + cats[0].name))  # one exact duplicate to drop
    run = tmp_path / "run"
    pawsight.train(data, approach="scratch", out=run, seed=3, drop_duplicates=True, size=32, width=8,
                   epochs=1, batch_size=16, device="cpu")
    info = read_run_info(run)
    assert len(info["data"]["dropped_duplicates"]) == 1
    # as if killed after its last checkpoint: run.json still says "training"
    write_run_info(run, {k: v for k, v in info.items() if k not in ("format", "pawsight_version")}
                   | {"status": "training"})
    # what kills mid-write leave behind: old temporary files of atomic writes (swept), a fresh one (another
    # process may be writing it: kept), and a user's file that merely looks like one (not our name: kept)
    leftovers = [run / ".run.json.k1ll3d.tmp", run / "checkpoint" / ".state.json.k1ll3d.tmp"]
    fresh, users = run / ".model.json.n0w.tmp", run / ".my-notes.txt.abc.tmp"
    for f in [*leftovers, fresh, users]:
        f.write_text("partial")
    for f in [*leftovers, users]:
        os.utime(f, (time.time() - 3600, time.time() - 3600))
    result = cli("train", "--resume", run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not any(f.exists() for f in leftovers) and fresh.exists() and users.exists()
    assert info["drop_duplicates"] is True and info["seed"] == 3 and info["val_fraction"] == 0.2
    assert info["data"]["root"] == str(data.resolve()) and info["params"]["width"] == 8
    resumed = read_run_info(run)
    assert resumed["status"] == "done" and resumed["drop_duplicates"] is True and resumed["seed"] == 3
    assert resumed["metrics"]["train_size"] == info["metrics"]["train_size"] == 80
