"""TEMPORARY: the inference contract (HELPERS.md) over today's models, until pawsight.inference lands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class _Predictor:
    def __init__(self, run: Path, threshold: float | None) -> None:
        from ..run import load_model, read_run_info

        self.model = load_model(run)
        self.info = read_run_info(run)
        self.classes_ = list(self.model.classes_)
        self.approach = self.info["approach"]
        self.preprocessing = self.model.preprocessing
        self.threshold = threshold

    def predict_proba(self, images: Any) -> np.ndarray:
        return np.asarray(self.model.predict_proba(np.asarray(images, np.uint8)))

    def predict_records(self, images: Any) -> list[dict[str, Any]]:
        proba = self.predict_proba(images)
        return [{"label": self.classes_[int(p.argmax())], "probability": float(p.max()),
                 "probabilities": {c: float(v) for c, v in zip(self.classes_, p, strict=True)},
                 "unknown_score": None} for p in proba]


def load(path: str | Path, *, threshold: float | None = None) -> _Predictor:
    return _Predictor(Path(path), threshold)
