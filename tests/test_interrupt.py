"""Ctrl-C (SIGINT) and SIGTERM during `pawsight train`, with real processes and signals: exit status 130, one
line saying it was interrupted and how to resume, never "trained ..."; run.json says "interrupted"; the
saved weights are usable; `pawsight train --resume RUN` continues from the last completed epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pawsight.errors import EXIT_INTERRUPTED, EXIT_OK

pytestmark = pytest.mark.slow  # processes killed and resumed: minutes; CI runs them, -m "not slow" skips


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across exec:
    # give the child the disposition a terminal user's pawsight has, whatever started the test run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_train(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PAWSIGHT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pawsight", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint)


def interrupt_after_first_epoch(proc: subprocess.Popen[str], run: Path, sig: int,
                                timeout: float = 240) -> tuple[str, str]:
    """Send `sig` once the first epoch's checkpoint exists (training is under way), return (out, err)."""
    deadline = time.monotonic() + timeout
    while not (run / "checkpoint" / "state.json").is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"training ended or stalled before its first epoch (status {proc.returncode}): {err}")
        time.sleep(0.05)
    proc.send_signal(sig)
    return proc.communicate(timeout=120)


def history(run: Path) -> list[dict]:
    return json.loads((run / "history.json").read_text())


def check_interrupted(proc: subprocess.Popen[str], out: str, err: str, run: Path) -> None:
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "trained" not in out and "Traceback" not in err
    assert f"continue with: pawsight train --resume {run}" in err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_scratch_interrupted_then_resumed(tiny: Path, tmp_path: Path, sig: int) -> None:
    run = tmp_path / "run"
    proc = start_train([str(tiny), "--approach", "scratch", "--size", "32", "--epochs", "300",
                        "--batch-size", "16", "--out", str(run)])
    out, err = interrupt_after_first_epoch(proc, run, sig)
    check_interrupted(proc, out, err, run)
    done = len(history(run))
    assert 1 <= done < 300
    # the best weights so far are a usable model
    picture = next((tiny / "validation" / "cats").iterdir())
    predicted = subprocess.run([sys.executable, "-m", "pawsight", "predict", str(run), str(picture)],
                               capture_output=True, text=True, timeout=120)
    assert predicted.returncode == EXIT_OK and predicted.stdout.split("\t")[1] in ("cats", "dogs")
    # resume: continues after the completed epochs (a later --epochs is allowed: it is not part of the recipe)
    resumed = subprocess.run([sys.executable, "-m", "pawsight", "train", "--resume", str(run),
                              "--epochs", str(done + 2)], capture_output=True, text=True, timeout=240,
                             env={**os.environ, "PAWSIGHT_PROGRESS": "0"})
    assert resumed.returncode == EXIT_OK, resumed.stderr
    assert f"resuming {run} after epoch {done}" in resumed.stderr
    assert resumed.stdout.startswith("trained scratch model")
    assert json.loads((run / "run.json").read_text())["status"] == "done"
    assert [h["epoch"] for h in history(run)] == list(range(1, done + 3))


@pytest.mark.slow
def test_finetune_interrupted_is_recorded_and_resumable(tiny: Path, tmp_path: Path) -> None:
    """Fine-tuning used to be recorded as finished when interrupted, so it could not be resumed."""
    run = tmp_path / "run"
    # engine=torch: no ONNX export of the fine-tuned network for the validation pass (seconds saved)
    proc = start_train([str(tiny), "--approach", "transfer", "--mode", "finetune", "--size", "64",
                        "--epochs", "50", "--batch-size", "16", "--set", "engine=torch", "--out", str(run)])
    out, err = interrupt_after_first_epoch(proc, run, signal.SIGINT)
    check_interrupted(proc, out, err, run)
    before = history(run)
    resumed = subprocess.run([sys.executable, "-m", "pawsight", "train", "--resume", str(run),
                              "--epochs", str(len(before) + 1)], capture_output=True, text=True, timeout=900,
                             env={**os.environ, "PAWSIGHT_PROGRESS": "0"})
    assert resumed.returncode == EXIT_OK, resumed.stderr
    after = history(run)
    assert len(after) == len(before) + 1 and after[:len(before)] == before  # continued, not restarted
    assert json.loads((run / "run.json").read_text())["status"] == "done"

