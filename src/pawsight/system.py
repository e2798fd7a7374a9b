"""What this machine lets pawsight use: THE core count behind every worker pool and thread setting (decode
threads, ONNX Runtime sessions, the server's model threads, hashing, advise's hardware description), and the
bounded map those pools are fed through."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """The cores this process may use (its CPU affinity: containers and `taskset` narrow it), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def ordered_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int = 64) -> Iterator[R]:
    """`pool.map(fn, items)` with at most `ahead` calls submitted and not yet consumed.

    `Executor.map` submits every call at once: a million pictures made a million futures before the first
    result (about 2.4 KB each, measured: 240 MB at 100,000 pictures in `data inspect`). Here memory is bounded
    by `ahead`, whatever the number of items; results come in input order, as with `map`. When the consumer
    stops early (an exception, a closed generator) the calls not started are cancelled."""
    window: deque[Future[R]] = deque()
    it = iter(items)
    try:
        for item in it:
            window.append(pool.submit(fn, item))
            if len(window) >= ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for future in window:
            future.cancel()


def release_freed_memory() -> None:
    """Give the memory the process has freed back to the operating system (glibc's malloc_trim; nothing on
    other C libraries). Why: glibc keeps freed heap memory, and each thread's arena, for later allocations,
    so a phase's temporaries (decoding threads, feature batches, the k-means, ONNX export) would stay in the
    process's resident memory through the phases after it and add up to its peak. Called between the phases
    of a training; measured on the 3,000- and 25,000-picture collections in docs/benchmarks.md."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return
    if trim is not None:
        trim(0)
