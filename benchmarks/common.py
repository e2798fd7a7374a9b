"""What several benchmarks share: the default run they measure."""

from __future__ import annotations

import time
from pathlib import Path


def default_run(data: Path, run: Path | None, scratch: Path) -> Path:
    """`run`, or the default transfer run (`pawsight.train(data)`) trained into `scratch`/run first."""
    if run is not None:
        return run
    import pawsight

    run = scratch / "run"
    t = time.perf_counter()
    pawsight.train(data, out=run)
    print(f"trained the default transfer run in {time.perf_counter() - t:.1f} s", flush=True)
    return run
