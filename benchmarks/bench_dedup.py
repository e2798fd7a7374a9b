"""Near-duplicate search speed: `dedup.near_pairs` (multi-index hashing) against comparing every pair.

    ./run.sh bench dedup                        # n = 10k, 100k, 1M at the default threshold
    ./run.sh bench dedup --sizes 10000 100000 --all-pairs-max 10000

Seeded random 64-bit hashes (like pHashes of unrelated photos) with 1% planted near copies at distances
0..threshold+1. Columns: seconds for near_pairs, pairs found, seconds for all pairs (measured up to
--all-pairs-max, above it estimated by n² scaling from the largest measured size), whether both found the same
pairs (where all pairs was measured), and the peak resident memory of this process so far.
Target: 1,000,000 hashes in <= 60 s on 2 cores. The exit status is 0 either way: it is a report.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

TARGET = 60.0  # seconds for 1M hashes


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench dedup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--all-pairs-max", type=int, default=100_000, help="largest n compared against all pairs")
    p.add_argument("--threshold", type=int, default=None, help="default: dedup.NEAR_THRESHOLD")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def hashes_with_copies(n: int, threshold: int, seed: int) -> np.ndarray:
    """`n` uint64 hashes: 99% random, 1% near copies of random ones at distances 0..threshold+1."""
    rng = np.random.default_rng(seed)
    n_copies = n // 100
    h = rng.integers(0, 2**64, size=n - n_copies, dtype=np.uint64)
    base = h[rng.integers(0, len(h), size=n_copies)]
    flips = np.zeros(n_copies, dtype=np.uint64)
    distance = rng.integers(0, threshold + 2, size=n_copies)
    for d in range(1, threshold + 2):  # d distinct random bits for the copies at distance >= d
        bit = np.argsort(rng.random((n_copies, 64)), axis=1)[:, d - 1].astype(np.uint64)
        flips |= np.where(distance >= d, np.uint64(1) << bit, np.uint64(0))
    return rng.permutation(np.concatenate([h, base ^ flips]))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from pawsight import dedup

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_dedup import all_pairs  # the reference lives with its test: one copy

    t = dedup.NEAR_THRESHOLD if args.threshold is None else args.threshold
    print(f"threshold: {t}  seed: {args.seed}  cores: {len(os.sched_getaffinity(0))}  "
          f"load average before: {os.getloadavg()[0]:.1f}\n")
    print("| n | near_pairs s | pairs found | all pairs s | identical pairs | peak RSS MB |")
    print("|---:|---:|---:|---:|:---:|---:|")
    measured: tuple[int, float] | None = None
    verdict = True
    for n in args.sizes:
        hashes = hashes_with_copies(n, t, args.seed)
        start = time.perf_counter()
        pairs = dedup.near_pairs(hashes, t)
        seconds = time.perf_counter() - start
        if n <= args.all_pairs_max:
            start = time.perf_counter()
            reference = all_pairs(hashes.tolist(), t)
            brute = time.perf_counter() - start
            measured = (n, brute)
            brute_text, same = f"{brute:.1f}", "yes" if reference == pairs else "NO"
            verdict &= reference == pairs
        else:
            brute_text = (f"~{measured[1] * (n / measured[0]) ** 2:,.0f} (estimated)" if measured else "-")
            same = "-"
        if n >= 1_000_000:
            verdict &= seconds <= TARGET * n / 1_000_000
        print(f"| {n:,} | {seconds:.2f} | {len(pairs):,} | {brute_text} | {same} | {peak_rss_mb():.0f} |",
              flush=True)
    print(f"\nverdict: {'PASS' if verdict else 'FAIL'} (same pairs as all pairs; 1M hashes <= "
          f"{TARGET:.0f} s; load average after: {os.getloadavg()[0]:.1f})")
    return 0
