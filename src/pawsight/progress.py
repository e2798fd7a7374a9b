"""Progress for whoever is watching: a live bar on a terminal (stderr), a widget in a Jupyter notebook, and
in a log (stderr is a file or pipe: nohup, a job scheduler, CI) one plain status line per running phase at
most every PAWSIGHT_PROGRESS_EVERY seconds (default 10), so a long command never goes quiet for minutes;
redrawn bars would garble a log. PAWSIGHT_PROGRESS=0 silences progress, =1 forces the bars. Descriptions
may hold file names, so they go through errors.shown()."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm  # the notebook widget under Jupyter (with ipywidgets), text bars elsewhere
from tqdm.std import tqdm as plain_tqdm

from .errors import shown

T = TypeVar("T")
EVERY = 10.0  # default seconds between two status lines of one phase in a log


def in_notebook() -> bool:
    """True inside a Jupyter kernel (notebook, JupyterLab, VS Code), where stderr is not a terminal but a
    person still watches the cell's output."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - a broken or partial IPython install: no notebook
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def mode() -> str:
    """"bars" (a terminal or a notebook, or PAWSIGHT_PROGRESS=1), "lines" (a log) or "off"."""
    forced = os.environ.get("PAWSIGHT_PROGRESS")
    if forced in ("0", "1"):
        return "bars" if forced == "1" else "off"
    return "bars" if sys.stderr.isatty() or in_notebook() else "lines"


def enabled() -> bool:
    """True when progress shows in any form."""
    return mode() != "off"


def every() -> float:
    """Seconds between status lines: PAWSIGHT_PROGRESS_EVERY, or 10 (a bad value is ignored: progress must
    never stop a command)."""
    try:
        return max(0.0, float(os.environ.get("PAWSIGHT_PROGRESS_EVERY", EVERY)))
    except ValueError:
        return EVERY


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class StatusLines(plain_tqdm):
    """A tqdm whose display is one plain line (phase, done/total, rate, ETA, postfix) at most every
    `interval` seconds, and a last line when a phase that lasted that long ends; nothing for a short one. A
    subclass, so every caller's use of a bar (update, set_postfix, n, refresh, ...) works unchanged."""

    def __init__(self, *args: Any, interval: float = EVERY, **kwargs: Any) -> None:
        self._interval = interval
        self._started = time.monotonic()
        self._last_line: float | None = None
        super().__init__(*args, file=sys.stderr, mininterval=0, miniters=1, maxinterval=0, **kwargs)

    def _amount(self, n: float) -> str:
        if self.unit_scale:
            return self.format_sizeof(n, self.unit if self.unit != "it" else "", self.unit_divisor)
        return f"{n:,.0f}"

    def line(self, final: bool = False) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        done = self.n - self.initial
        rate = done / elapsed
        unit = "" if self.unit_scale else f" {self.unit}"
        speed = f"{self._amount(rate)}{unit}/s" if rate >= 1 or not rate else f"{1 / rate:.1f} s/{self.unit}"
        count = self._amount(self.n)
        if self.total:
            count += f"/{self._amount(self.total)} ({100 * self.n / self.total:.0f}%)"
        desc = f"{self.desc}: " if self.desc else ""
        if final:
            ended = "done" if self.total is None or self.n >= self.total else "stopped"
            text = f"{desc}{count} {ended} in {duration(elapsed)} ({speed})"
        else:
            eta = f", ETA {duration((self.total - self.n) / rate)}" if self.total and rate > 0 else ""
            text = f"{desc}{count} {speed}{eta}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        now = time.monotonic()
        if msg is not None or not hasattr(self, "start_t") or now - (self._last_line or self._started) < \
                self._interval:
            return False  # a clearing call (msg=""), tqdm's first refresh inside __init__, or too soon
        self._last_line = now
        self._write(self.line())
        return True

    def close(self) -> None:
        if not self.disable and time.monotonic() - self._started >= self._interval:
            self._write(self.line(final=True))  # a phase long enough to be reported says it ended
        super().close()

    def _write(self, text: str) -> None:
        try:
            self.fp.write(text + "\n")
            self.fp.flush()
        except (OSError, ValueError):  # a closed or broken stderr: progress is never worth an error
            pass


def _make(items: Iterable[Any] | None, total: int | None, desc: str, unit: str) -> tqdm:
    how = mode()
    if how == "lines":
        return StatusLines(items, total=total, desc=shown(desc), unit=unit, leave=False, interval=every())
    # One live bar at a time: a bar opened while another is live (feature extraction inside `predict`)
    # stays silent, since a second bar moves the cursor with escape sequences; the outer bar shows progress.
    nested = any(not getattr(b, "disable", True) for b in list(getattr(tqdm, "_instances", ())))
    return tqdm(items, total=total, desc=shown(desc), unit=unit, disable=how == "off" or nested, leave=False,
                dynamic_ncols=True)


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """`items`, with a live bar (rate and ETA) or status lines, as `mode` says."""
    yield from _make(items, total, desc, unit)


def bar(total: int | None = None, desc: str = "", unit: str = "it") -> tqdm:
    """A manual bar (`.update(n)`, `.set_postfix(...)`), e.g. for training steps; status lines in a log."""
    return _make(None, total, desc, unit)
