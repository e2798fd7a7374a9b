"""Shared test fixtures: real photos from ../shared/datasets, a private decode cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
TINY = DATASETS / "cats_and_dogs_tiny"
FULL = DATASETS / "cats_and_dogs"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker gets cores of its own (CPU affinity, inherited by every subprocess it
    starts). pawsight sizes its decode threads, ONNX Runtime sessions and PyTorch threads from the affinity
    (system.default_workers), so two workers on two cores no longer run four spinning thread pools on two
    cores. Measured (2 cores, AVX-512, quiet): the notebook test 412 s -> 123 s, the whole suite (759 tests,
    -n 2) 660 s -> 311 s."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if count > len(cores):
        return  # more workers than cores: nothing to divide
    share = len(cores) // count
    index = int(worker.removeprefix("gw"))
    mine = cores[index * share:(index + 1) * share] if index < count - 1 else cores[index * share:]
    os.sched_setaffinity(0, mine)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Each test session decodes into its own cache (shared by its tests: the tiny set decodes once)."""
    cache = tmp_path_factory.mktemp("pawsight-cache")
    old = {k: os.environ.get(k) for k in ("PAWSIGHT_CACHE", "PAWSIGHT_PROGRESS")}
    os.environ["PAWSIGHT_CACHE"] = str(cache)
    os.environ["PAWSIGHT_PROGRESS"] = "0"
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny() -> Path:
    if not TINY.is_dir():
        pytest.fail(f"test data missing: {TINY} (the shared/ folder must sit beside the project)")
    return TINY


@pytest.fixture(scope="session")
def full() -> Path:
    if not FULL.is_dir():
        pytest.fail(f"test data missing: {FULL}")
    return FULL


@pytest.fixture(scope="session")
def transfer_run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One default transfer run (Lite0 frozen features) on the tiny set, shared by the inference tests."""
    from pawsight import api

    out = tmp_path_factory.mktemp("transfer-run") / "run"
    api.train(tiny, out=out)
    return out


@pytest.fixture(scope="session")
def classical_run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small classical run (HOG + colour, logistic regression) on the tiny set."""
    from pawsight import api

    out = tmp_path_factory.mktemp("classical-run") / "run"
    api.train(tiny, approach="classical", out=out, features="hog,color", model="logreg")
    return out


@pytest.fixture(scope="session")
def scratch_run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN from scratch (32 px, width 8, one epoch): seconds to train, enough to test plumbing."""
    from pawsight import api

    out = tmp_path_factory.mktemp("scratch-run") / "run"
    api.train(tiny, approach="scratch", out=out, size=32, width=8, epochs=1, batch_size=16, device="cpu")
    return out
