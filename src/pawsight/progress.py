"""Progress bars on stderr, only when a person is watching (a terminal), silent in logs and CI."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def enabled() -> bool:
    if os.environ.get("PAWSIGHT_PROGRESS") in ("0", "1"):
        return os.environ["PAWSIGHT_PROGRESS"] == "1"
    return sys.stderr.isatty()


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """`items`, with a live bar (rate and ETA) when stderr is a terminal."""
    yield from tqdm(items, total=total, desc=desc, unit=unit, disable=not enabled(), leave=False,
                    dynamic_ncols=True)


def bar(total: int | None = None, desc: str = "", unit: str = "it") -> tqdm:
    """A manual bar (`.update(n)`, `.set_postfix(...)`), e.g. for training steps."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled(), leave=False, dynamic_ncols=True)
