"""The run directory: one format for every approach.

    RUN/run.json           what was trained: format, pawsight version, approach, classes, preprocessing,
                           parameters, data summary, metrics, seconds per phase, status
    RUN/model.json         the model's own description (architecture / pipeline), plain JSON
    RUN/*.safetensors      learned tensors; never pickle
    RUN/history.csv|json   per-epoch history (deep learning)
    RUN/checkpoint/        state to resume an interrupted training

Every file is written atomically; `run.json` is written last, so a run directory with a complete `run.json`
has a complete model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import __version__
from .errors import PawsightError
from .storage import atomic_write_json

RUN_FORMAT = 1


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    info = {"format": RUN_FORMAT, "pawsight_version": __version__, **info}
    atomic_write_json(Path(run_dir) / "run.json", info, indent=2)


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not run_dir.is_dir():
        raise PawsightError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise PawsightError(f"{run_dir} is not a finished pawsight run (no run.json); train one with "
                            f"'pawsight train DATA --out {run_dir}'")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PawsightError(f"{path} is damaged and cannot be read ({exc})") from None
    if not isinstance(info, dict) or "approach" not in info or "classes" not in info:
        raise PawsightError(f"{path} is not a pawsight run description")
    if info.get("format") != RUN_FORMAT:
        raise PawsightError(f"{run_dir} was written in run format {info.get('format')!r} by pawsight "
                            f"{info.get('pawsight_version', '?')}; this pawsight {__version__} reads format "
                            f"{RUN_FORMAT}")
    return info


def load_model(run_dir: str | Path):  # -> ImageClassifier (import cycle kept lazy)
    """The trained model of a run directory, checked for completeness and compatibility."""
    from .models.base import model_class

    info = read_run_info(run_dir)
    if info.get("status") not in ("done", "interrupted"):
        raise PawsightError(f"training in {run_dir} did not finish (status: {info.get('status', '?')}); "
                            f"continue it with 'pawsight train --resume {run_dir}'")
    cls = model_class(info["approach"])
    try:
        model = cls.load(Path(run_dir))
    except PawsightError:
        raise
    except FileNotFoundError as exc:
        raise PawsightError(f"{run_dir} is incomplete: {Path(exc.filename or '?').name} is missing") from None
    except Exception as exc:  # noqa: BLE001 - damaged or tampered files must read as one sentence
        raise PawsightError(f"cannot load the model in {run_dir}: {type(exc).__name__}: {exc}") from None
    if list(model.classes_) != list(info["classes"]):
        raise PawsightError(f"{run_dir} is inconsistent: model classes {model.classes_} differ from run.json "
                            f"classes {info['classes']}")
    return model
