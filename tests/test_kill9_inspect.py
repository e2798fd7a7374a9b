"""Kill -9 `pawsight data inspect` at random moments, run it again: the result equals an uninterrupted run's
and the decode cache is never corrupt (issue 7). N rounds (default 3; PAWSIGHT_KILL_ROUNDS=N for more), each
killed at a random moment of a typical run (seed: PAWSIGHT_KILL_SEED, printed with -s)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pawsight.cache import ImageCache
from pawsight.data import scan
from pawsight.images import Preprocessing
from pawsight.inspect import inspect_data

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = int(os.environ.get("PAWSIGHT_KILL_ROUNDS", "3"))
SEED = int(os.environ.get("PAWSIGHT_KILL_SEED", str(int(time.time()) % 10_000)))
SIZE = 64


def start(data: Path, cache: Path, sheet: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PAWSIGHT_CACHE": str(cache),
           "PAWSIGHT_PROGRESS": "0"}
    command = [sys.executable, "-m", "pawsight", "data", "inspect", str(data), "--json", "--size", str(SIZE),
               "--sheet", str(sheet)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def working(proc: subprocess.Popen[str], cache: Path) -> float:
    """Wait until the command starts decoding (it creates the cache folder first); the time then."""
    while not cache.exists() and proc.poll() is None:
        time.sleep(0.005)
    return time.perf_counter()


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return comparable(json.loads(out))


def inspected(data: Path, cache: Path) -> dict[str, Any]:
    """`data inspect --json` run to the end in this process (quicker than starting one)."""
    result = inspect_data(data, size=SIZE, cache=ImageCache(cache))
    result.pop("_decoded")
    return comparable(json.loads(json.dumps(result)))


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    for volatile in ("decode", "contact_sheet"):  # timings and how much came from the cache
        result.pop(volatile, None)
    return result


def pixels(data: Path, cache: Path) -> tuple[np.ndarray, list[str]]:
    ds = scan(data)
    d = ImageCache(cache).load_samples(ds.samples, Preprocessing(SIZE), workers=1)
    return d.images, [str(p) for p in d.paths]


@pytest.mark.slow
def test_inspect_killed_at_random_moments_then_rerun_equals_uninterrupted(tiny: Path, tmp_path: Path) -> None:
    reference = inspected(tiny, tmp_path / "reference-cache")  # uninterrupted
    proc = start(tiny, tmp_path / "cli-cache", tmp_path / "ref.png")
    t = working(proc, tmp_path / "cli-cache")
    assert finish(proc) == reference  # the command gives what the function gives
    busy = time.perf_counter() - t  # decoding, writing the cache, the report: where a kill can hurt
    want_pixels, want_paths = pixels(tiny, tmp_path / "reference-cache")

    rng = random.Random(SEED)
    cache = tmp_path / "cache"
    moments = []
    for round_ in range(ROUNDS):
        shutil.rmtree(cache, ignore_errors=True)
        moment = rng.uniform(0, 0.7 * busy)
        proc = start(tiny, cache, tmp_path / "sheet.png")
        working(proc, cache)
        time.sleep(moment)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        moments.append((round(moment, 2), killed))
        again = inspected(tiny, cache)
        assert again == reference, f"round {round_}: killed {moment:.2f} s into the work"
        got_pixels, got_paths = pixels(tiny, cache)
        assert got_paths == want_paths
        np.testing.assert_array_equal(got_pixels, want_pixels)
        assert not list(cache.rglob("*.tmp"))
    print(f"\nkill -9 data inspect: seed {SEED}, work {busy:.1f} s, (moment s, killed) per round: "
          f"{moments}")
    assert any(killed for _, killed in moments), "no round was killed mid-run: the moments are too late"
