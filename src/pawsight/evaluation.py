"""Scores of a classifier on labelled pictures, as one JSON-ready dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str],
                           answers: list[str] | None = None) -> dict[str, Any]:
    """accuracy, log-loss, per-class precision/recall/F1/support and the confusion matrix (rows = truth).

    `accuracy`, `n_errors` and `log_loss` rate the most probable class (closed-set: every picture gets a
    class, as benchmarks and compare rank models). The confusion matrix and the per-class scores count the
    labels the user is given, `answers` (inference.decide's; default the most probable class): a picture
    answered "unknown" is in an "unknown" column (`confusion_columns`) and counts against its class's recall,
    so every surface (evaluate, report, plots) shows the same table."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n = len(y_true)
    if n == 0:
        return {"accuracy": None, "n_images": 0, "per_class": {}, "confusion_matrix": [],
                "confusion_columns": list(classes), "classes": classes}
    y_pred = proba.argmax(axis=1)
    answers = predicted_labels(proba, classes) if answers is None else list(answers)
    columns, counts, per_class = answer_table(y_true, answers, classes)
    p_true = np.clip(proba[np.arange(n), y_true], 1e-12, 1.0)
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "n_images": n,
        "n_errors": int((y_pred != y_true).sum()),
        "log_loss": float(-np.log(p_true).mean()),
        "macro_f1": float(np.mean([m["f1"] for m in per_class.values()])),
        "per_class": per_class,
        "confusion_matrix": counts.tolist(),
        "confusion_columns": columns,
        "classes": classes,
    }


def answer_table(y_true: np.ndarray, answers: list[str], classes: list[str]
                 ) -> tuple[list[str], np.ndarray, dict[str, dict[str, Any]]]:
    """(columns, confusion counts, per-class precision/recall/F1/support) of the answers given: rows are the
    true classes; columns the classes plus "unknown" when some picture was answered so."""
    from sklearn.metrics import precision_recall_fscore_support  # 1.5 s: only when scoring

    extra = sorted(set(answers) - set(classes))  # inference.decide's "unknown" (the only other answer)
    columns = list(classes) + extra
    index = {c: j for j, c in enumerate(columns)}
    y_true = np.asarray(y_true, dtype=np.int64)
    y_answer = np.array([index[a] for a in answers], dtype=np.int64)
    counts = np.zeros((len(classes), len(columns)), dtype=np.int64)
    np.add.at(counts, (y_true, y_answer), 1)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_answer, labels=labels, zero_division=0)
    per_class = {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                     "support": int(support[i])} for i, c in enumerate(classes)}
    return columns, counts, per_class


def picture_predictions(paths: list[Path], y_true: np.ndarray, proba: np.ndarray, classes: list[str],
                        predicted: list[str] | None = None, unknown_scores: np.ndarray | None = None
                        ) -> list[dict[str, Any]]:
    """One record per picture: path (absolute), label (true class), predicted (`predicted`, the label
    decision's answers, e.g. "unknown"; default the most probable class), probabilities (in `classes` order),
    unknown_score (the neither score, None without one) and loss = -log p(true class): what top-losses views,
    the list of errors and of unknowns in reports are drawn from."""
    proba = np.asarray(proba, dtype=np.float64)
    predicted = predicted_labels(proba, classes) if predicted is None else list(predicted)
    scores = [None] * len(predicted) if unknown_scores is None else [float(v) for v in unknown_scores]
    out = []
    for path, y, p, label, s in zip(paths, np.asarray(y_true, dtype=np.int64), proba, predicted, scores,
                                    strict=True):
        out.append({"path": str(Path(path).absolute()), "label": classes[int(y)], "predicted": label,
                    "probabilities": [float(v) for v in p], "unknown_score": s,
                    "loss": float(-np.log(max(float(p[int(y)]), 1e-12)))})
    return out


def predicted_labels(proba: np.ndarray, classes: list[str]) -> list[str]:
    """The predicted class names (argmax, as the metrics above count them)."""
    return [classes[int(i)] for i in np.asarray(proba).argmax(axis=1)] if len(proba) else []


def unknown_line(evaluation: dict[str, Any]) -> str:
    """The one sentence about the neither answer every surface prints (evaluate, report)."""
    answered = evaluation.get("accuracy_answered")
    return (f"answered 'unknown' (neither score > {evaluation['threshold']:.3g}): "
            f"{evaluation.get('unknown', 0)} of {evaluation.get('n_images', 0)}; "
            "accuracy of the labels given: "
            + ("-" if answered is None else f"{answered:.2%}"))


def no_better_than_guessing(evaluation: dict[str, Any]) -> str | None:
    """A warning when the accuracy is within 2 points of always answering the largest class, or of chance
    (one in k): such a model learnt nothing useful, however normal its other numbers look. None otherwise."""
    accuracy, n = evaluation.get("accuracy"), evaluation.get("n_images") or 0
    per_class = evaluation.get("per_class") or {}
    if accuracy is None or not n or not per_class:
        return None
    support = {c: int(m.get("support", 0)) for c, m in per_class.items()}
    largest = max(support, key=lambda c: support[c])
    majority, chance = support[largest] / n, 1 / len(support)
    if accuracy > max(majority, chance) + 0.02:
        return None
    baseline = (f"always answering '{largest}' ({majority:.1%})" if majority >= chance
                else f"guessing ({chance:.1%})")
    return (f"accuracy {accuracy:.1%} is no better than {baseline}: this model has not learnt to tell the "
            "classes apart")
