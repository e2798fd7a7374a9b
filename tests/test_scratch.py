"""The CNN-from-scratch approach end to end: train, save, load, tampering, SIGKILL + resume, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pawsight
from pawsight.cache import ImageCache
from pawsight.data import scan
from pawsight.errors import PawsightError
from pawsight.models.scratch import ScratchCNN
from pawsight.run import load_model

SMALL = dict(size=32, width=8, epochs=2, batch_size=16, device="cpu")


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("scratch") / "run"
    model, info = pawsight.train(tiny, approach="scratch", out=out, **SMALL)
    return out, model, info


def test_train_writes_a_complete_run_and_reloads_identically(trained, tiny):
    out, model, info = trained
    assert info["status"] == "done" and info["approach"] == "scratch" and info["classes"] == ["cats", "dogs"]
    assert {"model.json", "model.safetensors", "history.csv", "history.json", "run.json"} <= {
        p.name for p in out.iterdir()}
    assert len(json.loads((out / "history.json").read_text())) == 2
    loaded = load_model(out)
    X = ImageCache().load_samples(scan(tiny).split("validation"), loaded.preprocessing).images
    np.testing.assert_array_equal(model.predict_proba(X), loaded.predict_proba(X))
    assert loaded.predict_proba(X).shape == (len(X), 2)


def test_saved_preprocessing_is_the_one_used(trained):
    out, model, info = trained
    meta = json.loads((out / "model.json").read_text())
    assert meta["preprocessing"] == model.preprocessing.to_dict() == info["preprocessing"]
    assert meta["preprocessing"] == {"size": 32, "mode": "squash"}
    assert load_model(out).preprocessing == model.preprocessing
    assert len(meta["normalize"]["mean"]) == 3 and meta["architecture"]["name"] == "pawsight-resnet"


def test_tampered_or_incompatible_files_are_refused(trained, tmp_path):
    out = trained[0]
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in ("model.json", "model.safetensors"):
        (copy / f).write_bytes((out / f).read_bytes())
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(PawsightError, match="does not match"):
        ScratchCNN.load(copy)
    (copy / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    meta = json.loads((copy / "model.json").read_text())
    meta["architecture"]["width"] = 16  # weights no longer fit the architecture
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PawsightError, match="incompatible"):
        ScratchCNN.load(copy)
    (copy / "model.json").write_text("{not json")
    with pytest.raises(PawsightError, match="damaged"):
        ScratchCNN.load(copy)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pawsight", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PAWSIGHT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def _wait_for_checkpoint(proc: subprocess.Popen, run: Path) -> int:
    """Block until the training subprocess has completed an epoch; returns that epoch."""
    state = run / "checkpoint" / "state.json"
    for _ in range(1200):
        if state.is_file():
            return json.loads(state.read_text())["state"]["epoch"]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no checkpoint appeared: {proc.communicate()[1][-2000:]}")


TRAIN = ("import sys, pawsight; pawsight.train(sys.argv[1], approach='scratch', out=sys.argv[2], size=32, "
         "width=8, epochs=int(sys.argv[3]), batch_size=16, device='cpu')")


def _start_training(tiny: Path, run: Path, epochs: int) -> subprocess.Popen:
    """A real training process (small network, so checkpoints are quick to write) that the test interrupts."""
    return subprocess.Popen([sys.executable, "-c", TRAIN, str(tiny), str(run), str(epochs)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_resume_continues_from_the_last_epoch(tiny, tmp_path):
    run = tmp_path / "run"
    proc = _start_training(tiny, run, 30)
    _wait_for_checkpoint(proc, run)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = json.loads((run / "checkpoint" / "state.json").read_text())["state"]["epoch"]
    assert 1 <= killed_at < 30
    assert json.loads((run / "run.json").read_text())["status"] == "training"
    with pytest.raises(PawsightError, match="did not finish"):
        load_model(run)

    done = subprocess.run(_cli("train", "--resume", str(run)), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {run} after epoch {killed_at}" in done.stderr
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 31))
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["params"]["epochs"] == 30 and info["params"]["width"] == 8
    assert load_model(run).predict_proba(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 2)


def test_ctrl_c_stops_cleanly_and_leaves_a_usable_model(tiny, tmp_path):
    run = tmp_path / "run"
    proc = _start_training(tiny, run, 500)
    _wait_for_checkpoint(proc, run)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "interrupted after" in err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and "validation" in info["metrics"]
    result = pawsight.evaluate(run, tiny)
    assert 0 <= result["accuracy"] <= 1
