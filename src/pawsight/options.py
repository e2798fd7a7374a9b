"""Which values a numeric option may take: one definition for the command line (checked while the arguments
are parsed, so a bad value costs one line before anything runs) and for the models' parameters (checked when
a model is made, so `--set NAME=VALUE` and the Python API get the same one-line errors).

Limits and why:
- epochs, batch size: at least 1 (`--epochs 0` used to mean "the default", a surprise).
- image size: 16 to 1024 px for every approach. Below 16 px nothing in a photo is recognisable and the
  networks' five downsamplings leave no pixel; above 1024 px one decoded picture takes 3 MB of cache and a CPU
  training step is ~20x slower than at 224 px, for no accuracy a laptop can use.
- learning rate, time budget, classical C: positive and finite.
- validation fraction: 0 <= f < 1; 0 trains on every picture and reports no validation metrics (score the
  model afterwards with `pawsight evaluate RUN OTHER_DATA`). Pre-split folders ignore it.
- seed: 0 to 2**32 - 1 (what NumPy, PyTorch and scikit-learn all accept).
- top-k: at least 1; more than the model's classes shows them all. report's top losses: 0 to 100.
- threshold (the neither score above which a picture is "unknown"): 0 or more, finite. Scores are distances
  in units of the calibrated limit (1.0 = the default threshold; 1e6 means "never unknown"); a NaN or
  infinite threshold used to answer every picture "unknown".
- time budget: at most 30 days (a larger number is a typo, not a plan).
- serving: --port 0 (any free port) to 65535; --max-upload-mb above 0, at most 1024 (a request body is held
  in memory); --workers 1 to 64 model threads; --max-batch 1 to 256 pictures; --max-megapixels per picture
  above 0, at most 178 (the decompression-bomb limit of every picture read).
- batch size: at most 65536 (more pictures than any batch fits in memory).
NaN and infinities are refused everywhere.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from .errors import PawsightError

SIZE_RANGE = (16, 1024)
SEED_MAX = 2**32 - 1


def check_number(name: str, value: Any, *, integer: bool = False, minimum: float | None = None,
                 maximum: float | None = None, above: float | None = None, below: float | None = None,
                 optional: bool = True) -> Any:
    """`value` as an int (integer=True) or float within the limits, else a one-line PawsightError naming
    `name`. `minimum`/`maximum` are inclusive, `above`/`below` exclusive. None passes when `optional`."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PawsightError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise PawsightError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise PawsightError(f"{name} must be a finite number, got {value!r}")
    if integer:
        if not number.is_integer() or (isinstance(value, str) and not value.strip().lstrip("+-").isdigit()):
            raise PawsightError(f"{name} must be a whole number, got {value!r}")
        number = int(number)
    if minimum is not None and number < minimum:
        raise PawsightError(f"{name} must be at least {_fmt(minimum)}, got {_fmt(number)}")
    if maximum is not None and number > maximum:
        raise PawsightError(f"{name} must be at most {_fmt(maximum)}, got {_fmt(number)}")
    if above is not None and not number > above:
        raise PawsightError(f"{name} must be greater than {_fmt(above)}, got {_fmt(number)}")
    if below is not None and not number < below:
        raise PawsightError(f"{name} must be less than {_fmt(below)}, got {_fmt(number)}")
    return number


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# The limits of each numeric option, by parameter name (the CLI's --name and --set name share them).
LIMITS: dict[str, dict[str, Any]] = {
    "epochs": {"integer": True, "minimum": 1},
    "batch_size": {"integer": True, "minimum": 1, "maximum": 65536},
    "size": {"integer": True, "minimum": SIZE_RANGE[0], "maximum": SIZE_RANGE[1]},
    "crop": {"integer": True, "minimum": SIZE_RANGE[0], "maximum": SIZE_RANGE[1]},
    "lr": {"above": 0},
    "time_budget": {"above": 0, "maximum": 30 * 86400},
    "seed": {"integer": True, "minimum": 0, "maximum": SEED_MAX},
    "val_fraction": {"minimum": 0, "below": 1},
    "top_k": {"integer": True, "minimum": 1},
    "top_losses": {"integer": True, "minimum": 0, "maximum": 100},  # report --top-losses
    "threshold": {"minimum": 0},
    "port": {"integer": True, "minimum": 0, "maximum": 65535},
    "max_upload_mb": {"above": 0, "maximum": 1024},
    "workers": {"integer": True, "minimum": 1, "maximum": 64},
    "max_batch": {"integer": True, "minimum": 1, "maximum": 256},
    "max_files": {"integer": True, "minimum": 1, "maximum": 1024},
    "max_megapixels": {"above": 0, "maximum": 178},  # images.MAX_PIXELS: the decompression-bomb limit
    "C": {"above": 0},
    "weight_decay": {"minimum": 0},
    "search_budget": {"minimum": 0},  # 0: only the default candidate
    "width": {"integer": True, "minimum": 4, "maximum": 256},
    "depth": {"integer": True, "minimum": 0, "maximum": 16},
}


def check_param(name: str, value: Any) -> Any:
    """`value` checked against LIMITS[name] (None passes: it means "the default")."""
    return check_number(name, value, **LIMITS[name])


def check_params(params: dict[str, Any]) -> None:
    """Check every entry of `params` that has limits in LIMITS."""
    for name, value in params.items():
        if name in LIMITS:
            check_param(name, value)


def cli_type(name: str, parse: Callable[[str], Any] | None = None, flag: str | None = None
             ) -> Callable[[str], Any]:
    """An argparse `type=` that checks the option against LIMITS[name] at parse time (argparse turns the
    error into one line). `flag` is the option's spelling when it is not `--name`. The converter keeps
    `limits` and `parse` as attributes, so tests can walk every numeric option of the parser and know which
    values it must refuse."""
    shown_flag = flag or f"--{name.replace('_', '-')}"

    def convert(text: str) -> Any:
        try:
            value = parse(text) if parse is not None else text
            return check_number(shown_flag, value, **LIMITS[name])
        except PawsightError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{shown_flag} ")) from None

    convert.__name__ = name  # argparse names the type in some messages
    convert.limits = LIMITS[name]  # type: ignore[attr-defined]
    convert.parse = parse  # type: ignore[attr-defined]
    return convert
