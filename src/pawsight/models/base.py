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

import importlib
import inspect
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import PawsightError
from ..images import Preprocessing


class ImageClassifier:
    approach: ClassVar[str] = ""
    classes_: list[str]

    # -- parameters (scikit-learn convention: every constructor argument is stored under its own name) --
    def get_params(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

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
    return cls(**params)
