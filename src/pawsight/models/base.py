"""What every pawsight model is: a scikit-learn-style estimator over preprocessed uint8 images.

All approaches (classical features + scikit-learn, transfer learning, CNN from scratch) share this vocabulary,
so the CLI, evaluation, prediction and serving never need to know which one they hold:

    model = make_model("classical", features="hog,color", model="svm-rbf")
    model.fit(X_train, y_train, X_val, y_val)   # X: (n, size, size, 3) uint8 from model.preprocessing
    model.predict_proba(X)                      # (n, n_classes) float
    model.save(run_dir); load_model(run_dir)    # safetensors + JSON, never pickle

Constructor arguments are the parameters (`get_params()` returns them, they are saved in `model.json`);
learned state has a trailing underscore.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import PawsightError
from ..images import Preprocessing
from ..options import check_params
from ..storage import atomic_write_bytes, atomic_write_json


class ImageClassifier:
    approach: ClassVar[str] = ""
    classes_: list[str]

    # -- parameters (scikit-learn convention: every constructor argument is stored under its own name) --
    @classmethod
    def _get_param_names(cls) -> list[str]:
        return sorted(p for p in inspect.signature(cls.__init__).parameters if p != "self")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as `sklearn.base.clone` and grid searches expect them. Parameters are
        plain values (no nested estimators), so `deep` changes nothing."""
        return {n: getattr(self, n) for n in self._get_param_names()}

    def set_params(self, **params: Any) -> ImageClassifier:
        """Change constructor arguments (scikit-learn convention); unknown names are a ValueError."""
        valid = set(self._get_param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; "
                                 f"valid parameters: {', '.join(sorted(valid))}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        changed = {n: v for n, v in self.get_params().items()
                   if v != inspect.signature(type(self).__init__).parameters[n].default}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def check_params(self) -> None:
        """Refuse parameter values the model cannot use, with one line (PawsightError) before any work is
        done; numeric limits are shared with the command line (options.LIMITS). Models add their own."""
        check_params(self.get_params())

    @property
    def preprocessing(self) -> Preprocessing:
        """How files become the arrays this model takes; saved with the model."""
        raise NotImplementedError

    # -- learning and inference --------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None, *, classes: list[str], run_dir: Path | None = None,
            ) -> ImageClassifier:
        """Learn from uint8 images `X` (n, size, size, 3) with integer labels `y` indexing `classes`.

        `run_dir`, when given, is where long trainings keep checkpoints and history so they can resume.
        """
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.predict_proba(X)).argmax(axis=1)

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(X) == np.asarray(y)).mean()) if len(y) else float("nan")

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write the learned state into `directory` (model.json + *.safetensors), atomically per file."""
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path) -> ImageClassifier:
        raise NotImplementedError


def write_model_files(directory: Path, blob: bytes, description: dict[str, Any]) -> None:
    """Write `model.safetensors` (the tensors) and `model.json` (everything else, plus the tensors' SHA-256,
    so a damaged or swapped weights file is caught on load)."""
    directory = Path(directory)
    atomic_write_bytes(directory / "model.safetensors", blob)
    checksum = {"safetensors_sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write_json(directory / "model.json", {**description, **checksum}, indent=1)


def read_model_files(directory: Path, approach: str, fmt: int) -> tuple[dict[str, Any], bytes]:
    """`model.json` and the checked `model.safetensors` bytes of a model written by `write_model_files`.

    Anything that is not a `fmt` model of `approach` with intact tensors is a one-sentence PawsightError;
    a missing file raises FileNotFoundError (the run loader names it)."""
    directory = Path(directory)
    try:
        description = json.loads((directory / "model.json").read_text())
        blob = (directory / "model.safetensors").read_bytes()
    except FileNotFoundError:
        raise
    except ValueError as exc:
        raise PawsightError(f"{directory}/model.json is damaged (not JSON: {exc})") from None
    except OSError as exc:
        raise PawsightError(f"cannot read the {approach} model in {directory}: {exc}") from None
    if not isinstance(description, dict) or description.get("approach") != approach:
        raise PawsightError(f"{directory}/model.json is not a {approach} pawsight model")
    if description.get("format") != fmt:
        raise PawsightError(f"{directory}/model.json has format {description.get('format')!r}; this pawsight "
                            f"reads {approach} models of format {fmt}")
    if hashlib.sha256(blob).hexdigest() != description.get("safetensors_sha256"):
        raise PawsightError(f"{directory}/model.safetensors does not match model.json (damaged or replaced); "
                            "retrain or restore the run directory")
    return description, blob


# approach -> (module, class). Imported lazily, so `pawsight data ...` never pays for torch or scikit-learn.
APPROACHES = {"classical": ("classical", "ClassicalClassifier"),
              "transfer": ("transfer", "TransferClassifier"),
              "scratch": ("scratch", "ScratchCNN")}


def model_class(approach: str) -> type[ImageClassifier]:
    if approach not in APPROACHES:
        raise PawsightError(f"unknown approach {approach!r}; choose one of: {', '.join(APPROACHES)}")
    module, name = APPROACHES[approach]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def make_model(approach: str, **params: Any) -> ImageClassifier:
    """A new, unfitted model of `approach` with constructor `params` (unknown names are a clear error)."""
    cls = model_class(approach)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise PawsightError(f"the {approach} approach has no option(s) {', '.join(unknown)}; "
                            f"it accepts: {', '.join(sorted(accepted))}")
    model = cls(**params)
    model.check_params()
    return model


# Training-set fractions of a learning curve: a handful of points, dense where curves bend (small sizes).
CURVE_FRACTIONS = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


def learning_curve(fit_score: Any, y: np.ndarray, n_validation: int, seed: int = 0,
                   fractions: tuple[float, ...] = CURVE_FRACTIONS) -> dict[str, Any]:
    """Validation accuracy against training-set size, measured at training time (the report only draws
    it): `fit_score(idx)` refits the model's own final learner on the training rows `idx` (nested, stratified
    subsets; at least 2 pictures per class) and returns its validation accuracy. Models whose learner is cheap
    to refit on features they already hold (classical, frozen transfer) call this at the end of `fit`."""
    import math
    import time

    t0 = time.perf_counter()
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    order = {c: rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)}
    sizes: list[int] = []
    scores: list[float] = []
    for f in fractions:
        idx = np.sort(np.concatenate([o[:max(2, math.ceil(f * len(o)))] for o in order.values()]))
        if sizes and len(idx) == sizes[-1]:
            continue
        sizes.append(int(len(idx)))
        scores.append(float(fit_score(idx)))
    return {"train_sizes": sizes, "validation_accuracy": scores, "n_validation": int(n_validation),
            "seconds": round(time.perf_counter() - t0, 2)}
