"""Training curves and evaluation views of a run, as small PNGs plus the numbers they draw.

    figures = evaluation_figures(evaluation)      # confusion matrix, per-class P/R/F1, ROC + PR, calibration
    curves = training_curves(history)             # deep learning: loss, accuracy, learning rate per epoch
    curve = learning_curve("runs/c")              # classical / frozen transfer: accuracy vs training size
    plot_run("runs/c")                            # `pawsight plot RUN`: write them into RUN/plots/

`evaluation` is what `scoring.evaluate` (`pawsight.evaluate`) returns (and saves under the run): the metrics
plus `predictions`, one dict per picture {path, label, predicted, probabilities, loss}. Figures are drawn
with matplotlib's Agg canvas (no display, no global pyplot state); names from the user's folders are drawn
as plain text, never parsed as math.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PawsightError, shown
from ..evaluation import answer_table
from ..storage import PNG_SOFTWARE

# Figures are drawn at 2x a screen's 80 dpi and shown at half size: sharp on high-density screens, and no text
# smaller than MIN_POINTS (9 pt = 20 px in the PNG, 10 px on the page), enforced for every figure in to_png.
DPI = 160
MIN_POINTS = 9.0
PLOTS_DIR = "plots"  # inside the run directory: pictures pawsight drew, redrawn by `pawsight plot`


@dataclass
class Figure:
    """One drawn view: `png` bytes and the numbers behind them in `data` (what tests check)."""

    name: str                  # file stem, e.g. "confusion-matrix"
    title: str
    png: bytes
    data: dict[str, Any] = field(default_factory=dict)
    note: str = ""             # a sentence shown under the picture (e.g. why a view was simplified)


def new_figure(width: float, height: float, ncols: int = 1):
    """A matplotlib Figure on the Agg canvas and its axes (no pyplot: thread-safe, no display needed)."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


# PNG_SOFTWARE goes in every PNG pawsight draws, so a later --out may replace only its own files (storage)


def to_png(fig) -> bytes:
    """The figure as PNG bytes (marked as pawsight's), every text raised to MIN_POINTS first."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        if text.get_fontsize() < MIN_POINTS:
            text.set_fontsize(MIN_POINTS)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": PNG_SOFTWARE})
    return buf.getvalue()


def _text(ax, *args: Any, **kwargs: Any) -> None:
    ax.text(*args, parse_math=False, **kwargs)


# -- training curves ---------------------------------------------------------------------------------------

def best_epoch(history: list[dict[str, Any]]) -> int | None:
    """The epoch whose weights training kept: the first with the lowest validation loss (training.py's rule),
    or the last epoch when there was no validation data."""
    if not history:
        return None
    scored = [(r["val_loss"], r["epoch"]) for r in history if r.get("val_loss") is not None]
    return min(scored)[1] if scored else int(history[-1]["epoch"])


def training_curves(history: list[dict[str, Any]]) -> Figure | None:
    """Loss, accuracy (train and validation) and learning rate per epoch, best epoch marked."""
    if not history:
        return None
    epochs = [int(r["epoch"]) for r in history]

    def col(key: str) -> list[float | None]:
        return [None if r.get(key) is None else float(r[key]) for r in history]

    data = {"epoch": epochs, **{k: col(k) for k in ("train_loss", "val_loss", "train_acc", "val_acc", "lr")},
            "best_epoch": best_epoch(history)}
    fig, (loss_ax, acc_ax, lr_ax) = new_figure(9.6, 2.8, 3)
    for ax, keys, title in ((loss_ax, ("train_loss", "val_loss"), "loss"),
                            (acc_ax, ("train_acc", "val_acc"), "accuracy")):
        for key, style in zip(keys, ("-o", "-s"), strict=True):
            pts = [(e, v) for e, v in zip(epochs, data[key], strict=True) if v is not None]
            if pts:
                label = key.split("_")[0].replace("val", "validation")
                ax.plot(*zip(*pts, strict=True), style, ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    lr_ax.plot(epochs, data["lr"], "-", color="tab:green")
    lr_ax.set_title("learning rate (end of epoch)")
    lr_ax.set_xlabel("epoch")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if data["best_epoch"] is not None:
        for ax in (loss_ax, acc_ax, lr_ax):
            ax.axvline(data["best_epoch"], color="gray", ls="--", lw=1)
        _text(loss_ax, data["best_epoch"], loss_ax.get_ylim()[1], " best", va="top", fontsize=8, color="gray")
    return Figure("training-curves", "Training curves", to_png(fig), data,
                  note=f"dashed line: epoch {data['best_epoch']}, whose weights were kept (lowest validation "
                       "loss)")


def learning_curve(run: str | Path) -> Figure | None:
    """Validation accuracy against training-set size, as measured when the run was trained (classical and
    frozen-transfer runs: models/base.learning_curve); None for runs without one (scratch, fine-tuning,
    runs trained without validation pictures). Drawn from run.json alone: never retrains, never reads a
    picture."""
    from ..run import read_run_info

    data = read_run_info(run).get("learning_curve")
    if not isinstance(data, dict) or not data.get("train_sizes"):
        return None
    sizes, scores = data["train_sizes"], data["validation_accuracy"]
    fig, (ax,) = new_figure(4.8, 3.0)
    ax.plot(sizes, scores, "-o", ms=4)
    ax.set_xlabel("training pictures")
    ax.set_ylabel("validation accuracy")
    ax.set_title("learning curve")
    ax.grid(alpha=0.3)
    return Figure("learning-curve", "Learning curve", to_png(fig), data,
                  note="the run's final learner refitted at training time on growing stratified subsets of "
                       "its training features, scored on its validation pictures; more pictures still help "
                       "where the curve still climbs")


# -- evaluation views ---------------------------------------------------------------------------------------

def _columns(evaluation: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(classes, true index per picture, (n, k) probabilities, predicted label per picture)."""
    classes = list(evaluation["classes"])
    preds = evaluation.get("predictions")
    if preds is None:
        raise PawsightError("this evaluation has no per-picture predictions; evaluate the run again")
    y = np.array([classes.index(p["label"]) for p in preds], dtype=np.int64)
    proba = np.array([p["probabilities"] for p in preds], dtype=np.float64).reshape(len(preds), len(classes))
    return classes, y, proba, [str(p["predicted"]) for p in preds]


def confusion(evaluation: dict[str, Any]) -> Figure:
    """Counts and row-normalised shares (rows: true class; columns: predicted, 'unknown' when it occurs),
    counted from the per-picture predictions."""
    classes, y, _, predicted = _columns(evaluation)
    columns, counts, _ = answer_table(y, predicted, classes)  # the table `pawsight evaluate` prints
    rows = counts.sum(1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    k = len(classes)
    side = min(9.0, 1.6 + 0.55 * max(k, 2))
    fig, axes = new_figure(2 * side + 0.6, side, 2)
    for ax, matrix, title, fmt in ((axes[0], counts, "counts", "{:d}"), (axes[1], shares, "share of each row",
                                                                          "{:.0%}")):
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        if k <= 20:
            for i in range(matrix.shape[0]):
                for j in range(matrix.shape[1]):
                    _text(ax, j, i, fmt.format(matrix[i, j]), ha="center", va="center", fontsize=8,
                          color="white" if shares[i, j] > 0.5 else "black")
        ticks = [_short(c) for c in columns] if k <= 30 else []
        ax.set_xticks(range(len(ticks)), ticks, rotation=45 if k > 3 else 0,
                      ha="right" if k > 3 else "center", fontsize=8)
        ax.set_yticks(range(len(ticks[:k])), ticks[:k], fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    data = {"classes": classes, "columns": columns, "counts": counts.tolist(), "normalized": shares.tolist()}
    return Figure("confusion-matrix", "Confusion matrix", to_png(fig), data)


def _score(value: float) -> str:
    """A score in [0, 1] with enough digits that a near-perfect one does not read as perfect (0.9996, not
    1.000)."""
    if value < 0.999 or value == 1.0:
        return f"{value:.3f}"
    return f"{math.floor(value * 1e4) / 1e4:.4f}"  # rounded down: 0.99996 is shown 0.9999, never 1.0000


def _short(name: str, n: int = 18) -> str:
    """A class name for a tick or legend label: control characters shown as escapes (a missing-glyph warning
    would otherwise print them raw to the terminal), shortened, and '$' escaped so it is never parsed as
    math."""
    name = shown(name)
    name = name if len(name) <= n else name[:n - 1] + "…"
    return name.replace("$", r"\$")


def per_class(evaluation: dict[str, Any]) -> Figure:
    """Precision, recall and F1 of each class (from the per-picture predictions), as grouped bars."""
    classes, y, _, predicted = _columns(evaluation)
    scores = answer_table(y, predicted, classes)[2]  # the scores `pawsight evaluate` prints
    data = {"classes": classes, **{key: [scores[c][key] for c in classes]
                                   for key in ("precision", "recall", "f1", "support")}}
    k = len(classes)
    fig, (ax,) = new_figure(min(10.0, 2.5 + 0.9 * k), 2.8)
    x = np.arange(k)
    bars = (("precision", "tab:blue"), ("recall", "tab:orange"), ("f1", "tab:green"))
    for i, (key, color) in enumerate(bars):
        ax.bar(x + (i - 1) * 0.27, data[key], 0.27, label=key, color=color)
    ax.set_xticks(x, [_short(c) for c in classes], rotation=30 if k > 4 else 0)
    ax.set_ylim(0, 1.05)
    fig.legend(loc="outside lower center", ncol=3, frameon=False)  # below the axes: never over a bar
    ax.set_title("per-class precision, recall, F1")
    return Figure("per-class", "Per-class precision, recall and F1", to_png(fig), data)


MAX_ROC_CLASSES = 10


def roc_pr(evaluation: dict[str, Any]) -> Figure | None:
    """ROC and precision-recall curves: for two classes, the second class against the first; for up to
    MAX_ROC_CLASSES classes, each class against the rest. None (with nothing drawn) beyond that."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    classes, y, proba, _ = _columns(evaluation)
    k = len(classes)
    if k > MAX_ROC_CLASSES or len(y) == 0:
        return None
    positives = [1] if k == 2 else list(range(k))
    curves = []
    fig, (roc_ax, pr_ax) = new_figure(8.4, 3.4, 2)
    for c in positives:
        truth = (y == c).astype(int)
        if truth.min() == truth.max():
            continue  # a class with no pictures (or only it): no curve
        fpr, tpr, _ = roc_curve(truth, proba[:, c])
        prec, rec, _ = precision_recall_curve(truth, proba[:, c])
        entry = {"class": classes[c], "auc": float(auc(fpr, tpr)),
                 "average_precision": float(average_precision_score(truth, proba[:, c])),
                 "fpr": fpr.tolist(), "tpr": tpr.tolist(), "precision": prec.tolist(), "recall": rec.tolist()}
        curves.append(entry)
        label = _short(classes[c])
        roc_ax.plot(fpr, tpr, label=f"{label} (AUC {_score(entry['auc'])})")
        pr_ax.plot(rec, prec, label=f"{label} (AP {_score(entry['average_precision'])})")
    if not curves:
        return None
    roc_ax.plot([0, 1], [0, 1], ":", color="gray")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        ax.legend(loc="lower right" if ax is roc_ax else "lower left")
    note = (f"positive class: {_short(classes[1], 40)}" if k == 2 else "each class against the rest")
    return Figure("roc-pr", "ROC and precision-recall", to_png(fig), {"curves": curves, "mode": (
        "binary" if k == 2 else "one-vs-rest")}, note=note)


def calibration(evaluation: dict[str, Any], bins: int = 10) -> Figure:
    """Reliability diagram: accuracy against confidence (the top probability) in equal-width bins, and the
    expected calibration error ECE = sum over bins of (pictures in bin / all) x |accuracy - confidence|."""
    classes, y, proba, _ = _columns(evaluation)
    conf = proba.max(1) if len(y) else np.zeros(0)
    correct = (proba.argmax(1) == y) if len(y) else np.zeros(0, bool)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    table = []
    ece = 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        acc = float(correct[m].mean()) if n else None
        mean_conf = float(conf[m].mean()) if n else None
        if n:
            ece += n / len(y) * abs(acc - mean_conf)  # type: ignore[operator]
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": n, "accuracy": acc,
                      "confidence": mean_conf})
    data = {"bins": table, "ece": float(ece), "n_images": int(len(y))}
    fig, (ax, hist_ax) = new_figure(7.6, 3.2, 2)
    centers = (edges[:-1] + edges[1:]) / 2
    accs = [t["accuracy"] if t["accuracy"] is not None else 0 for t in table]
    ax.bar(centers, accs, width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"reliability (ECE {ece:.3f})")
    ax.legend(fontsize=8, loc="upper left")
    hist_ax.bar(centers, [t["count"] for t in table], width=1 / bins, edgecolor="black", color="tab:gray")
    # log scale: a good model puts nearly every picture in the top bin, which hides the others on a linear one
    hist_ax.set(xlabel="confidence", ylabel="pictures (log scale)", xlim=(0, 1), title="how confident")
    if any(t["count"] for t in table):
        hist_ax.set_yscale("log")
    return Figure("calibration", "Calibration", to_png(fig), data,
                  note="bars on the diagonal: the model is as sure as it is right; below: over-confident")


def top_losses(evaluation: dict[str, Any], k: int = 8) -> list[dict[str, Any]]:
    """The k pictures with the highest loss (-log of the probability given to the true class), highest
    first: the pictures the model got most confidently wrong (or, when it made fewer than k errors, got
    right with the least confidence)."""
    preds = evaluation.get("predictions") or []
    order = sorted(range(len(preds)), key=lambda i: -float(preds[i]["loss"]))
    classes = list(evaluation["classes"])
    out = []
    for i in order[:k]:
        p = preds[i]
        probs = list(p["probabilities"])
        top = int(np.argmax(probs))
        out.append({**p, "index": i, "probability": float(probs[top]), "top_class": classes[top],
                    "true_probability": float(probs[classes.index(p["label"])])})
    return out


def top_losses_figure(evaluation: dict[str, Any], k: int = 8, thumb: int = 128) -> Figure:
    """A gallery of `top_losses`: each picture with its true label, prediction, probability and loss."""
    from PIL import ImageOps

    from ..images import ImageError, open_rgb

    items = top_losses(evaluation, k)
    cols = min(4, max(1, len(items)))
    rows = max(1, math.ceil(len(items) / cols))
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(2.4 * cols, 3.0 * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, item in zip(axes, items, strict=False):
        try:  # square thumbnails (centre crop): a regular grid whatever the pictures' shapes
            ax.imshow(np.asarray(ImageOps.fit(open_rgb(item["path"]), (thumb, thumb))))
        except (ImageError, OSError):
            _text(ax, 0.5, 0.5, "(file gone)", ha="center", transform=ax.transAxes)
        ax.set_title(f"{_short(Path(item['path']).name, 20)}\ntrue {_short(item['label'], 14)}\n"
                     f"answer {_short(item['predicted'], 14)} {item['probability']:.2f}\n"
                     f"loss {float(item['loss']):.2f}", loc="left")
    return Figure("top-losses", "Top losses", to_png(fig), {"items": items})


def evaluation_figures(evaluation: dict[str, Any], k: int = 8) -> list[Figure]:
    """Every evaluation view of one evaluation, in reading order."""
    figures = [confusion(evaluation), per_class(evaluation), roc_pr(evaluation), calibration(evaluation),
               top_losses_figure(evaluation, k)]
    return [f for f in figures if f is not None]


# -- the `pawsight plot` command -------------------------------------------------------------------------

def run_figures(run: str | Path) -> list[Figure]:
    """The figures of a run's training, from its files alone: training curves (per-epoch history) and the
    learning curve measured at training time, whichever it has."""
    from ..run import read_history

    return [f for f in (training_curves(read_history(run)), learning_curve(run)) if f is not None]


def write_figures(run: str | Path, figures: list[Figure]) -> list[Path]:
    """Write figures as RUN/plots/<name>.png (atomically; only files pawsight draws live there)."""
    from ..storage import PNG_MARKER, atomic_write_bytes, check_output_file

    paths = []
    for f in figures:  # a user's own file under a plot's name is never replaced (one line instead)
        path = check_output_file(Path(run) / PLOTS_DIR / f"{f.name}.png", PNG_MARKER, option="plot")
        atomic_write_bytes(path, f.png)
        paths.append(path)
    return paths


def plot_run(run: str | Path, evaluation: dict[str, Any] | None = None) -> list[Path]:
    """Draw a run's curves (and the views of `evaluation`, when given) into RUN/plots/."""
    figures = run_figures(run)
    if evaluation is not None:
        figures += evaluation_figures(evaluation)
    return write_figures(run, figures)


# -- where the evaluation comes from -------------------------------------------------------------------

def load_evaluation(run: str | Path, data: str | Path | None = None, split: str | None = None
                    ) -> dict[str, Any]:
    """The evaluation a report shows: `data` scored now (scoring.evaluate, which saves it under the run);
    without `data`, the run's latest saved evaluation (training saves its validation one), else the run's own
    validation pictures scored now."""
    from ..run import list_evaluations, read_evaluation, read_run_info
    from ..scoring import evaluate

    if data is None:
        if list_evaluations(run):
            return read_evaluation(run)
        data = read_run_info(run).get("data", {}).get("root")
        if not data or not Path(data).is_dir():
            raise PawsightError(f"{shown(run)} has no saved evaluation and its training pictures are gone; "
                                "give labelled pictures with --data DIR")
        split = split or "validation"
    return evaluate(run, data, split=split)
