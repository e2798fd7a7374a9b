"""The command line as a test drives it — THE helper every test uses (no copies in test files): `pawsight`
in a subprocess, as a user runs it, and the one-line error rule every user mistake must follow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def pawsight(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
             prefix: list[str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m pawsight ARGS` (no progress bars, one BLAS thread; `prefix` e.g. a wrapper command)
    and capture its output."""
    full_env = {**os.environ, "PAWSIGHT_PROGRESS": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*(prefix or []), sys.executable, "-m", "pawsight", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def error_line(stderr: str, says: str = "") -> str:
    """The single `error:` line in `stderr` (never a traceback, never "unexpected ... please report it")."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    for bad in ("Traceback", "unexpected", "please report"):
        assert bad not in stderr, stderr[-2000:]
    assert says in lines[0], lines[0]
    return lines[0]


def one_error_line(result: subprocess.CompletedProcess[str], says: str = "") -> str:
    """The single `error:` line of a refused command, which exits with status 2."""
    assert result.returncode == 2, result.stderr[-2000:]
    return error_line(result.stderr, says)
