"""Figures a person can read: every figure pawsight draws (training and learning curves, evaluation views,
top losses, explanations, compare charts) is inspected as drawn — text size in pixels, labelled ticks,
legends clear of the data — not only as PNG bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pawsight import choose
from pawsight.report import explain, plots
from pawsight.run import read_evaluation

MIN_PIXELS = 20  # in the PNG, drawn at 2x: 10 px on the page


@pytest.fixture()
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every matplotlib figure handed to plots.to_png, after it has been turned into a PNG."""
    figures: list[Any] = []
    real = plots.to_png

    def keep(fig: Any) -> bytes:
        png = real(fig)
        figures.append(fig)
        return png

    monkeypatch.setattr(plots, "to_png", keep)
    return figures


def texts(fig: Any) -> list[Any]:
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def check_readable(fig: Any) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # lays the figure out as the PNG was
    renderer = canvas.get_renderer()
    for t in texts(fig):
        px = t.get_fontsize() * fig.dpi / 72
        assert px >= MIN_PIXELS, f"{t.get_text()!r}: {px:.1f} px"
    for ax in fig.axes:
        if not ax.axison or not ax.has_data():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            labels = [lab.get_text() for lab in axis.get_ticklabels() if lab.get_visible()]
            ticks = [t for t in axis.get_ticklocs()]
            if ticks:
                assert any(labels), f"{ax.get_title()!r}: an axis with ticks and no tick labels"
        for legend in [ax.get_legend(), *fig.legends]:
            if legend is None:
                continue
            box = legend.get_window_extent(renderer)
            for patch in ax.patches:  # bars
                if patch.get_height() > 0.02:
                    assert not box.overlaps(patch.get_window_extent(renderer)), "legend over a bar"
            for line in ax.lines:  # plotted points
                xy = ax.transData.transform(np.column_stack(line.get_data()).astype(float))
                inside = [(box.x0 < x < box.x1 and box.y0 < y < box.y1) for x, y in xy]
                assert not any(inside), f"legend over a point of {line.get_label()!r}"


def test_every_evaluation_and_run_figure_is_readable(classical_run: Path, drawn: list[Any]) -> None:
    run = classical_run
    evaluation = read_evaluation(run)
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 1 - 0.5 / e,
                "val_acc": 1 - 0.6 / e, "lr": 0.01 * e} for e in range(1, 6)]
    figures = [*plots.evaluation_figures(evaluation), plots.training_curves(history),
               plots.learning_curve(run)]
    assert all(f is not None for f in figures) and len(drawn) == len(figures)
    for fig in drawn:
        check_readable(fig)
    top = drawn[4]  # evaluation_figures: confusion, per-class, ROC/PR, calibration, top losses
    names = " ".join(t.get_text() for t in texts(top))
    assert Path(evaluation["predictions"][0]["path"]).suffix in names  # file names under the pictures


def test_near_perfect_scores_never_read_as_perfect() -> None:
    assert plots._score(0.99996) == "0.9999" and plots._score(1.0) == "1.000" and plots._score(0.9) == "0.900"


def test_explanation_is_readable_and_says_what_the_model_does_not_use(transfer_run: Path, tiny: Path,
                                                                      drawn: list[Any]) -> None:
    picture = sorted((tiny / "validation" / "cats").glob("*.jpg"))[0]
    explain.render(explain.explain(transfer_run, picture, method="features"))
    check_readable(drawn[-1])
    words = " ".join(t.get_text() for t in texts(drawn[-1]))
    assert "evidence (relative)" in words  # the heat map's colour bar
    assert words.count("not used by this model") == 2  # a deep run reads neither HOG nor colour bins


def test_compare_charts_are_readable(drawn: list[Any]) -> None:
    rows = [choose.CompareRow(approach=a, per_class=n, n_train=2 * n, accuracy=acc, train_seconds=t,
                              images_per_second=100.0, model_bytes=1000)
            for a, pts in (("classical", [(50, 0.62, 8.0), (200, 0.68, 30.0), (800, 0.71, 120.0)]),
                           ("transfer", [(50, 0.95, 12.0), (200, 0.97, 25.0), (800, 0.98, 70.0)]))
            for n, acc, t in pts]
    choose.draw_compare(rows)
    assert len(drawn) == 2
    for fig in drawn:
        check_readable(fig)
    size_ticks = [lab.get_text() for lab in drawn[0].axes[0].xaxis.get_ticklabels()]
    assert {"100", "400", "1600"} <= set(size_ticks)  # every measured size is labelled
