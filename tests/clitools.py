"""The command line as a test drives it: `pawsight` in a subprocess (as a user runs it) and the one-line
error rule every user mistake must follow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def pawsight(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m pawsight ARGS` (no progress bars, one BLAS thread) and capture its output."""
    full_env = {**os.environ, "PAWSIGHT_PROGRESS": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pawsight", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(result: subprocess.CompletedProcess[str], says: str = "") -> str:
    """The single `error:` line of a refused command (exit 2; never a traceback or "please report it")."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "please report" not in result.stderr
    assert says in lines[0], lines[0]
    return lines[0]
