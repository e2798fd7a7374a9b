"""Progress in a log: when stderr is not a terminal, plain status lines at most every
PAWSIGHT_PROGRESS_EVERY seconds; bars on a terminal as before; PAWSIGHT_PROGRESS=0 silent."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tqdm.auto import tqdm

from pawsight import progress

SRC = Path(__file__).resolve().parents[1] / "src"
SLOW = """
import time
from pawsight.progress import bar, progress

def slow(n):
    for i in range(n):
        time.sleep(0.05)
        yield i

for _ in progress(slow(40), total=40, desc="decoding train", unit="img"):
    pass
with bar(total=20, desc="epoch 1/3", unit="step") as b:
    for _ in range(20):
        time.sleep(0.05)
        b.update(1)
        b.set_postfix(loss="0.500")
for _ in progress(range(5), total=5, desc="quick"):
    pass
"""
LINE = re.compile(r"^decoding train: (\d+)/40 \((\d+)%\) [\d.,]+ img/s, ETA \d+ s$")


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PAWSIGHT_PROGRESS")}
    full["PYTHONPATH"] = str(SRC)
    return subprocess.run([sys.executable, "-c", SLOW], capture_output=True, text=True, timeout=60,
                          env={**full, **env})


def test_a_log_gets_status_lines_with_done_total_rate_and_eta() -> None:
    result = run({"PAWSIGHT_PROGRESS_EVERY": "0.5"})
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    decoding = [m for line in lines if (m := LINE.match(line))]
    # 2 s of decoding at one line per 0.5 s: 3 or 4 lines (at most every interval), counts going up
    assert 2 <= len(decoding) <= 4, lines
    done = [int(m.group(1)) for m in decoding]
    assert done == sorted(done) and 0 < done[0] < 40
    final = r"decoding train: 40/40 \(100%\) done in \d+ s \([\d.,]+ img/s\)"
    assert re.fullmatch(final, lines[len(decoding)])
    epoch = [line for line in lines if line.startswith("epoch 1/3: ")]
    assert re.fullmatch(r"epoch 1/3: \d+/20 \(\d+%\) [\d.,]+ step/s, ETA \d+ s, loss=0.500", epoch[0])
    assert epoch[-1].startswith("epoch 1/3: 20/20 (100%) done in ")
    assert not any("quick" in line for line in lines)  # a phase shorter than the interval says nothing
    assert "\r" not in result.stderr and "\x1b" not in result.stderr  # no bar redraws in a log


def test_progress_0_is_silent_and_the_default_interval_is_quiet_for_short_phases() -> None:
    assert run({"PAWSIGHT_PROGRESS": "0", "PAWSIGHT_PROGRESS_EVERY": "0.1"}).stderr == ""
    assert run({}).stderr == ""  # 3 s in all, the default 10 s interval: nothing to say


class Clocked(io.StringIO):
    """A log stream that remembers when each line was written."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def write(self, s: str) -> int:
        self.times += [time.monotonic()] * s.count("\n")
        return super().write(s)


def test_lines_are_at_least_the_interval_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    log = Clocked()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.delenv("PAWSIGHT_PROGRESS")
    monkeypatch.setenv("PAWSIGHT_PROGRESS_EVERY", "0.2")
    with progress.bar(total=None, desc="predicting", unit="img") as b:
        for _ in range(100):
            time.sleep(0.01)
            b.update(1)
    lines = log.getvalue().splitlines()
    assert 3 <= len(lines) <= 7 and lines[-1].startswith("predicting: 100 done in ")
    assert re.fullmatch(r"predicting: \d+ [\d.]+ img/s", lines[0])  # no total: no percentage, no ETA
    gaps = [b - a for a, b in zip(log.times[:-2], log.times[1:-1], strict=True)]
    assert min(gaps) >= 0.2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_keeps_its_tqdm_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.delenv("PAWSIGHT_PROGRESS")
    assert progress.mode() == "bars"
    b = progress.bar(total=3, desc="x")
    assert type(b) is tqdm and not isinstance(b, progress.StatusLines) and not b.disable
    b.close()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress.mode() == "lines" and isinstance(progress.bar(total=3), progress.StatusLines)
    monkeypatch.setenv("PAWSIGHT_PROGRESS", "1")
    assert progress.mode() == "bars"  # forced bars, as before
    monkeypatch.setenv("PAWSIGHT_PROGRESS", "0")
    assert progress.bar(total=3).disable and not progress.enabled()


def test_a_bad_interval_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAWSIGHT_PROGRESS_EVERY", "soon")
    assert progress.every() == progress.EVERY
    monkeypatch.setenv("PAWSIGHT_PROGRESS_EVERY", "2.5")
    assert progress.every() == 2.5


def test_byte_counts_are_scaled() -> None:
    b = progress.StatusLines(total=2_000_000, desc="cats.zip", unit="B", unit_scale=True, interval=0)
    b.update(1_000_000)
    assert re.fullmatch(r"cats\.zip: 1\.00MB/2\.00MB \(50%\) [\d.]+[kMGTPEZY]?B/s, ETA \d+ s", b.line())
    b.disable = True
