"""Progress bars only when a person is watching: a terminal (on stderr) or a Jupyter notebook (a widget),
silent in logs and CI. PAWSIGHT_PROGRESS=1 / =0 forces them on / off. Descriptions may hold file names, so
they go through errors.shown()."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm  # the notebook widget under Jupyter (with ipywidgets), text bars elsewhere

from .errors import shown

T = TypeVar("T")


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


def enabled() -> bool:
    if os.environ.get("PAWSIGHT_PROGRESS") in ("0", "1"):
        return os.environ["PAWSIGHT_PROGRESS"] == "1"
    return sys.stderr.isatty() or in_notebook()


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """`items`, with a live bar (rate and ETA) when someone is watching (see `enabled`)."""
    yield from tqdm(items, total=total, desc=shown(desc), unit=unit, disable=not enabled(), leave=False,
                    dynamic_ncols=True)


def bar(total: int | None = None, desc: str = "", unit: str = "it") -> tqdm:
    """A manual bar (`.update(n)`, `.set_postfix(...)`), e.g. for training steps."""
    return tqdm(total=total, desc=shown(desc), unit=unit, disable=not enabled(), leave=False,
                dynamic_ncols=True)
