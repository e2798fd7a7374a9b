"""What this machine lets pawsight use: THE core count behind every worker pool and thread setting (decode
threads, ONNX Runtime sessions, the server's model threads, hashing, advise's hardware description)."""

from __future__ import annotations

import os


def default_workers() -> int:
    """The cores this process may use (its CPU affinity: containers and `taskset` narrow it), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
