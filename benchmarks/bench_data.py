"""Decode cache speed on cats_and_dogs (3000 ~500x375 JPEGs): cold decode and warm reload, in images/s.

    ./run.sh bench data                          # sizes 224 and 128, one run each
    ./run.sh bench data --size 224 --repeat 3    # one size, best of 3 (each repeat with a fresh cache)
    ./run.sh bench data --data DIR --workers 2

Columns, each size measured on a fresh temporary cache folder:
- `cold`: scan the folder + read, hash, validate, decode, preprocess and store every picture (nothing cached);
- `warm`: the same call again, everything served from the cache (no decoding).
Both include touching every page of the returned pixels (they may be a lazy map of the cache file).
`cold CPU ms/img` is this process's user+sys time per picture: on a busy machine img/s drops, this does not.
Targets: cold >= 800 img/s, warm < 1 s for the whole set. The exit status is 0 either way: it is a report.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cats_and_dogs"
COLD_TARGET = 800.0  # images/s
WARM_TARGET = 1.0  # seconds for the whole set


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--size", type=int, default=None, help="one preprocessing size (default: 224 and 128)")
    p.add_argument("--repeat", type=int, default=1, help="repeats per size; the best time is reported")
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: all cores)")
    return p.parse_args(argv)


def touch(images: np.ndarray) -> int:
    """Read every picture: the pixels are read from the pool lazily (cache.PoolRows), and a fair time
    includes bringing them into the process (in batches, as the commands do)."""
    from pawsight.cache import batches

    return sum(int(pixels.reshape(-1)[::4096].sum()) for _, pixels in batches(images))


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(data: Path, size: int, workers: int | None) -> tuple[int, float, float, int, float]:
    """(images, cold seconds, warm seconds, skipped, cold CPU seconds) for one fresh cache folder."""
    from pawsight.cache import ImageCache
    from pawsight.data import scan
    from pawsight.images import Preprocessing

    prep = Preprocessing(size=size)
    tmp = Path(tempfile.mkdtemp(prefix="pawsight-bench-data-"))
    try:
        cache = ImageCache(tmp / "cache")
        t0, c0 = time.perf_counter(), cpu_seconds()
        samples = scan(data).samples
        cold = cache.load_samples(samples, prep, workers=workers)
        touch(cold.images)
        t_cold, c_cold = time.perf_counter() - t0, cpu_seconds() - c0
        t0 = time.perf_counter()
        samples = scan(data).samples
        warm = cache.load_samples(samples, prep, workers=workers)
        touch(warm.images)
        t_warm = time.perf_counter() - t0
        if warm.decoded or len(warm.images) != len(cold.images):
            print(f"warning: warm load decoded {warm.decoded} files (expected 0)")
        return len(cold.images), t_cold, t_warm, len(cold.skipped), c_cold
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder not found: {args.data}")
        return 0
    sizes = [args.size] if args.size else [224, 128]
    print(f"data: {args.data}  repeat: {args.repeat}  workers: {args.workers or 'all cores'}  "
          f"cores: {len(os.sched_getaffinity(0))}  load average before: {os.getloadavg()[0]:.1f}\n")
    print("| size | images | cold s | cold img/s | cold CPU ms/img | warm s | warm img/s | cold >= 800 img/s "
          "| warm < 1 s |")
    print("|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|")
    verdicts = []
    for size in sizes:
        runs = [measure(args.data, size, args.workers) for _ in range(max(1, args.repeat))]
        n, skipped = runs[0][0], runs[0][3]
        cold = min(r[1] for r in runs)
        warm = min(r[2] for r in runs)
        cpu = min(r[4] for r in runs)
        cold_ok, warm_ok = n / cold >= COLD_TARGET, warm < WARM_TARGET
        verdicts += [cold_ok, warm_ok]
        print(f"| {size} | {n}{f' (+{skipped} skipped)' if skipped else ''} | {cold:.2f} | {n / cold:.0f} "
              f"| {cpu / n * 1000:.2f} | {warm:.3f} | {n / warm:.0f} | {'PASS' if cold_ok else 'FAIL'} "
              f"| {'PASS' if warm_ok else 'FAIL'} |", flush=True)
    print(f"\nverdict: {'PASS' if all(verdicts) else 'FAIL'} (targets: cold >= {COLD_TARGET:.0f} img/s, "
          f"warm < {WARM_TARGET:g} s for the whole set; load average after: {os.getloadavg()[0]:.1f})")
    return 0
