"""`pawsight train` under torchrun: two processes on this machine (gloo), one run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pawsight.run import load_model

pytestmark = pytest.mark.slow  # whole trainings in subprocesses: CI runs them, -m "not slow" skips them


def test_two_process_torchrun_trains_and_writes_one_run(tiny, tmp_path):
    out = tmp_path / "runs" / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pawsight", "train", str(tiny), "--approach", "scratch", "--out", str(out),
           "--size", "32", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]
    env = {**os.environ, "PAWSIGHT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "done" and info["metrics"]["train_size"] == 80
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and history[0]["val_acc"] is not None
    assert done.stderr.count("epoch  train_loss") == 1  # only rank 0 reports
    assert load_model(out).predict_proba(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 2)
