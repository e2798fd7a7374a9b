"""Run pawsight's benchmarks on ../shared/datasets (or --data) and print their tables.

    ./run.sh bench               every benchmark
    ./run.sh bench data          one of: data, classical, transfer, scratch, serve, report, choose, predict,
                                 neither, dedup, scale, issues, ray
Extra arguments after the name are passed to that benchmark (see each bench_*.py's --help).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

NAMES = ["data", "classical", "transfer", "scratch", "serve", "report", "choose", "predict", "neither",
         "dedup", "scale", "issues", "ray"]


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    names = NAMES if not argv or argv[0] == "all" else [argv[0]]
    rest = argv[1:]
    for name in names:
        if name not in NAMES:
            print(f"unknown benchmark {name!r}; choose from: {', '.join(NAMES)} or all", file=sys.stderr)
            return 2
        print(f"\n### benchmark: {name}\n", flush=True)
        module = importlib.import_module(f"bench_{name}")
        status = module.main(rest)
        if status:
            return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
