"""Scores of a classifier on labelled pictures, as one JSON-ready dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """accuracy, log-loss, per-class precision/recall/F1/support and the confusion matrix (rows = truth)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # 1.5 s: only when scoring

    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n = len(y_true)
    labels = list(range(len(classes)))
    if n == 0:
        return {"accuracy": None, "n_images": 0, "per_class": {}, "confusion_matrix": [], "classes": classes}
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    p_true = np.clip(proba[np.arange(n), y_true], 1e-12, 1.0)
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "n_images": n,
        "n_errors": int((y_pred != y_true).sum()),
        "log_loss": float(-np.log(p_true).mean()),
        "macro_f1": float(np.mean(f1)),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
        "classes": classes,
    }


def picture_predictions(paths: list[Path], y_true: np.ndarray, proba: np.ndarray, classes: list[str],
                        predicted: list[str] | None = None) -> list[dict[str, Any]]:
    """One record per picture: path (absolute), label (true class), predicted (`predicted`, the label
    decision's answers, e.g. "unknown"; default the most probable class), probabilities (in `classes` order)
    and loss = -log p(true class): what top-losses views and reports are drawn from."""
    proba = np.asarray(proba, dtype=np.float64)
    predicted = predicted_labels(proba, classes) if predicted is None else list(predicted)
    out = []
    for path, y, p, label in zip(paths, np.asarray(y_true, dtype=np.int64), proba, predicted, strict=True):
        out.append({"path": str(Path(path).absolute()), "label": classes[int(y)], "predicted": label,
                    "probabilities": [float(v) for v in p],
                    "loss": float(-np.log(max(float(p[int(y)]), 1e-12)))})
    return out


def predicted_labels(proba: np.ndarray, classes: list[str]) -> list[str]:
    """The predicted class names (argmax, as the metrics above count them)."""
    return [classes[int(i)] for i in np.asarray(proba).argmax(axis=1)] if len(proba) else []
