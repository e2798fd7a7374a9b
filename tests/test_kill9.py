"""kill -9 at random moments of `pawsight train`, then resume: the run directory is never half-written at any
kill point, and the finished run equals an uninterrupted one (same classes, same predictions; for the CNN
from scratch the same weights, which training.py guarantees without a time budget).

    PAWSIGHT_KILL9_ROUNDS=20 PAWSIGHT_KILL9_SEED=7 python -m pytest -q tests/test_kill9.py

runs more kills (default: 3 per approach, seed 0). Every kill point is checked:
- every JSON file of the run directory (run.json, model.json, history.json, checkpoint/state.json) parses;
- when model.json and model.safetensors both exist, the weights' SHA-256 is the one model.json records;
- a checkpoint present is whole (state.json parses, its tensors files parse);
- a run marked "done" loads.
Temporary files of an interrupted atomic write (hidden `.NAME.*.tmp`) and a half-made `checkpoint.new/` may
remain: readers never look at them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as st_load

import pawsight

pytestmark = pytest.mark.slow  # processes killed and resumed: minutes; CI runs them, -m "not slow" skips

ROUNDS = int(os.environ.get("PAWSIGHT_KILL9_ROUNDS", "3"))
SEED = int(os.environ.get("PAWSIGHT_KILL9_SEED", "0"))
RECIPES = {
    "scratch": ["--approach", "scratch", "--size", "32", "--epochs", "3", "--batch-size", "16"],
    "classical": ["--approach", "classical", "--features", "hog,color", "--size", "48", "--model", "logreg"],
}


def env() -> dict[str, str]:
    # one thread: bit-identical arithmetic between the uninterrupted and the resumed runs
    return {**os.environ, "PAWSIGHT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def train_args(data: Path, run: Path, approach: str) -> list[str]:
    """Resume when a run was started (classical: that re-runs it with its recorded settings), else start."""
    if (run / "run.json").is_file():
        return ["train", "--resume", str(run)]
    return ["train", str(data), *RECIPES[approach], "--out", str(run)]


def command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pawsight", *args]


def status(run: Path) -> str | None:
    try:
        return json.loads((run / "run.json").read_text()).get("status")
    except FileNotFoundError:
        return None


def check_whole(run: Path, where: str) -> None:
    """The invariants that must hold at every kill point (see the module docstring)."""
    if not run.exists():
        return
    for path in run.rglob("*.json"):
        if path.name.startswith(".") or "checkpoint.new" in path.parts:
            continue  # a temporary file or the checkpoint being staged: never read
        try:
            json.loads(path.read_text())
        except ValueError as exc:
            pytest.fail(f"{where}: {path} is half-written: {exc}")
    model, weights = run / "model.json", run / "model.safetensors"
    if model.is_file() and weights.is_file():
        recorded = json.loads(model.read_text())["safetensors_sha256"]
        # the weights are written first, model.json (with their checksum) second, run.json last
        assert recorded == hashlib.sha256(weights.read_bytes()).hexdigest(), f"{where}: weights != model.json"
    for ckpt in (run / "checkpoint", run / "checkpoint.old"):
        if (ckpt / "state.json").is_file():
            for tensors in ckpt.glob("*.safetensors"):
                st_load(tensors.read_bytes())  # raises on a half-written file
    if status(run) == "done":
        pawsight.load(run)


def predictions(run: Path, pictures: Path) -> tuple[list[str], np.ndarray]:
    result = subprocess.run(command(["predict", str(run), str(pictures), "--json", "--top-k", "9"]),
                            capture_output=True, text=True, timeout=300, env=env())
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]  # one JSON object per picture
    assert rows and all("error" not in r for r in rows)
    labels = [r["label"] for r in rows]
    proba = np.array([[t["probability"] for t in sorted(r["top"], key=lambda t: t["label"])] for r in rows])
    return labels, proba


@pytest.mark.parametrize("approach", list(RECIPES))
def test_kill9_at_random_moments_then_resume(approach: str, tiny: Path, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-{approach}")
    reference = tmp_path / "reference"
    t0 = time.monotonic()
    done = subprocess.run(command(train_args(tiny, reference, approach)), capture_output=True, text=True,
                          timeout=600, env=env())
    duration = time.monotonic() - t0
    assert done.returncode == 0, done.stderr

    run = tmp_path / "run"
    kills = []
    for round_ in range(ROUNDS):
        if status(run) == "done":
            break
        delay = rng.uniform(0.0, duration)
        proc = subprocess.Popen(command(train_args(tiny, run, approach)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env())
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no handler, no cleanup
        _, err = proc.communicate(timeout=60)
        kills.append(round(delay, 2))
        where = f"{approach}, seed {SEED}, kill {round_ + 1} at {delay:.2f} s (exit {proc.returncode})"
        assert proc.returncode in (0, -9), f"{where}: {err}"
        check_whole(run, where)

    while status(run) != "done":  # resume to the end (a kill before run.json existed starts it afresh)
        result = subprocess.run(command(train_args(tiny, run, approach)), capture_output=True, text=True,
                                timeout=600, env=env())
        assert result.returncode == 0, f"{approach} after kills at {kills}: {result.stderr}"
    check_whole(run, f"{approach} finished after kills at {kills}")

    ref_info = json.loads((reference / "run.json").read_text())
    info = json.loads((run / "run.json").read_text())
    assert info["classes"] == ref_info["classes"]
    assert info["data"]["counts"] == ref_info["data"]["counts"]
    labels, proba = predictions(run, tiny / "validation")
    ref_labels, ref_proba = predictions(reference, tiny / "validation")
    assert labels == ref_labels, f"kills at {kills}"
    np.testing.assert_allclose(proba, ref_proba, atol=1e-6, err_msg=f"kills at {kills}")
    if approach == "scratch":  # resuming reproduces the uninterrupted weights exactly
        ours, theirs = (st_load((r / "model.safetensors").read_bytes()) for r in (run, reference))
        assert ours.keys() == theirs.keys()
        assert all(np.array_equal(ours[k], theirs[k]) for k in ours), f"kills at {kills}"
        assert len(json.loads((run / "history.json").read_text())) == 3
