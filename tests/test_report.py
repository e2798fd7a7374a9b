"""Report: what the plots draw (numbers behind each figure), explanations that point at the evidence, and the
HTML report rendered in a real headless Chromium (system binary, never downloaded)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import browser_page
from pawsight import api, cli
from pawsight.errors import PawsightError
from pawsight.report import plots
from pawsight.report.explain import explain, feature_views, render, target_layer, torch_network
from pawsight.report.html import SECTIONS, build_report
from pawsight.run import load_model

XSS = "<img src=x onerror=alert(1)>"


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


# -- runs ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classical_run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """logreg on HOG + colour: no probability calibration, so a refit on all training rows is the run's
    model."""
    run = tmp_path_factory.mktemp("classical") / "run"
    _, info = api.train(tiny, approach="classical", out=run, features="hog,color", model="logreg")
    return run, info


@pytest.fixture(scope="module")
def evaluation(classical_run: tuple[Path, dict], tiny: Path) -> dict:
    return plots.load_evaluation(classical_run[0], tiny, split="validation")


def corner_pictures(root: Path, size: int, per_class: int, seed: int = 0) -> None:
    """Noise pictures; class 'a' has a bright square in the top-left corner, class 'b' in the bottom-right."""
    rng = np.random.default_rng(seed)
    side = size // 4
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            x = rng.integers(0, 160, (size, size, 3), dtype=np.uint8)
            if cls == "a":
                x[:side, :side] = 255
            else:
                x[-side:, -side:] = 255
            Image.fromarray(x).save(root / cls / f"{i:03d}.png")


@pytest.fixture(scope="module")
def corner_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = tmp_path_factory.mktemp("corner") / "data"
    corner_pictures(data, 128, 40)
    run = data.parent / "run"
    _, info = api.train(data, approach="scratch", out=run, size=128, width=8, epochs=8, ema=False,
                        batch_size=16, seed=0)
    # the toy task must be learnt, or the maps mean nothing
    assert info["metrics"]["validation"]["accuracy"] == 1.0
    return run, data


# -- evaluation views: the numbers behind each figure -------------------------------------------------------

def test_confusion_matrix_counts_equal_the_evaluation(evaluation: dict) -> None:
    fig = plots.confusion(evaluation)
    assert is_png(fig.png)
    assert fig.data["counts"] == evaluation["confusion_matrix"]
    assert sum(map(sum, fig.data["counts"])) == evaluation["n_images"] == len(evaluation["predictions"])
    for row, counts in zip(fig.data["normalized"], fig.data["counts"], strict=True):
        assert row == pytest.approx([c / sum(counts) for c in counts])


def test_per_class_scores_equal_the_evaluation(evaluation: dict) -> None:
    fig = plots.per_class(evaluation)
    for i, c in enumerate(fig.data["classes"]):
        for key in ("precision", "recall", "f1"):
            assert fig.data[key][i] == pytest.approx(evaluation["per_class"][c][key])
        assert fig.data["support"][i] == evaluation["per_class"][c]["support"]


def test_top_losses_are_the_highest_loss_pictures(evaluation: dict) -> None:
    preds = evaluation["predictions"]
    classes = evaluation["classes"]
    # the loss each picture really has, from its probabilities
    losses = [-math.log(max(p["probabilities"][classes.index(p["label"])], 1e-12)) for p in preds]
    assert [p["loss"] for p in preds] == pytest.approx(losses, abs=1e-6)
    top = plots.top_losses(evaluation, k=5)
    assert [t["path"] for t in top] == [preds[i]["path"] for i in np.argsort(losses, kind="stable")[::-1][:5]]
    assert all(a["loss"] >= b["loss"] for a, b in zip(top, top[1:], strict=False))
    assert min(t["loss"] for t in top) >= sorted(losses)[-5]
    wrong = sum(p["predicted"] != p["label"] for p in preds)
    assert sum(t["predicted"] != t["label"] for t in top) == min(5, wrong)  # errors come before right answers
    gallery = plots.top_losses_figure(evaluation, k=5)
    assert is_png(gallery.png) and [t["path"] for t in gallery.data["items"]] == [t["path"] for t in top]


def fake_evaluation(y: list[int], proba: list[list[float]], classes: list[str]) -> dict:
    return {"classes": classes, "predictions": [
        {"path": f"{i}.jpg", "label": classes[t], "predicted": classes[int(np.argmax(p))], "probabilities": p,
         "loss": -math.log(p[t])} for i, (t, p) in enumerate(zip(y, proba, strict=True))]}


def test_calibration_diagram_and_expected_calibration_error() -> None:
    # 10 pictures at confidence 0.9 of which 5 are right (gap 0.4); 10 at 0.6 of which 6 are right (gap 0)
    y = [0] * 5 + [1] * 5 + [0] * 6 + [1] * 4
    proba = [[0.9, 0.1]] * 10 + [[0.6, 0.4]] * 10
    fig = plots.calibration(fake_evaluation(y, proba, ["x", "y"]), bins=10)
    assert fig.data["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.0)
    bins = {round(b["low"], 1): b for b in fig.data["bins"] if b["count"]}
    assert set(bins) == {0.8, 0.5} and bins[0.8]["accuracy"] == 0.5 and bins[0.5]["accuracy"] == 0.6
    assert sum(b["count"] for b in fig.data["bins"]) == 20 and is_png(fig.png)


def test_roc_and_precision_recall_curves() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60).tolist()
    p1 = np.clip(np.array(y) * 0.3 + rng.random(60) * 0.7, 0, 1)
    fig = plots.roc_pr(fake_evaluation(y, [[1 - v, v] for v in p1], ["cat", "dog"]))
    (curve,) = fig.data["curves"]
    assert curve["class"] == "dog" and fig.data["mode"] == "binary"
    assert curve["auc"] == pytest.approx(roc_auc_score(y, p1))
    assert curve["average_precision"] == pytest.approx(average_precision_score(y, p1))
    y3 = [0, 1, 2] * 10
    proba3 = [[0.8 if j == t else 0.1 for j in range(3)] for t in y3]
    fig3 = plots.roc_pr(fake_evaluation(y3, proba3, ["a", "b", "c"]))
    assert fig3.data["mode"] == "one-vs-rest" and [c["auc"] for c in fig3.data["curves"]] == [1.0] * 3
    # class names are text, never math: an unbalanced TeX command in a folder name must not break a drawing
    odd = fake_evaluation(y, [[1 - v, v] for v in p1], ["$\\frac$", "a$b"])
    assert all(is_png(f.png) for f in plots.evaluation_figures(odd))
    many = [f"c{i}" for i in range(plots.MAX_ROC_CLASSES + 1)]
    assert plots.roc_pr(fake_evaluation([0, 1], [[0.5, 0.5] + [0.0] * (len(many) - 2)] * 2, many)) is None


def test_training_curves_mark_the_best_epoch() -> None:
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5 + e / 20, "val_loss": v, "val_acc": 0.6,
                "lr": 0.01 * e, "seconds": 1.0} for e, v in zip(range(1, 6), [0.9, 0.5, 0.4, 0.4, 0.6],
                                                                  strict=True)]
    fig = plots.training_curves(history)
    assert fig.data["best_epoch"] == 3  # the first lowest validation loss, as training keeps it
    assert fig.data["val_loss"] == [0.9, 0.5, 0.4, 0.4, 0.6] and fig.data["lr"] == pytest.approx(
        [0.01, 0.02, 0.03, 0.04, 0.05])
    assert is_png(fig.png) and plots.training_curves([]) is None
    no_val = [{**r, "val_loss": None, "val_acc": None} for r in history]
    assert plots.training_curves(no_val).data["best_epoch"] == 5


def test_learning_curve_is_measured_at_training_time(classical_run: tuple[Path, dict]) -> None:
    run, info = classical_run
    fig = plots.learning_curve(run)
    assert fig.data == info["learning_curve"]  # drawn from run.json: the report never refits
    sizes, scores = fig.data["train_sizes"], fig.data["validation_accuracy"]
    assert sizes == sorted(sizes) and len(sizes) >= 3
    assert sizes[-1] == info["metrics"]["train_size"] and fig.data["n_validation"] == info["metrics"][
        "validation"]["n_images"]
    # the last point is the run's own learner on all its training pictures (calibration aside)
    assert scores[-1] == pytest.approx(info["metrics"]["validation"]["accuracy"], abs=0.05)
    assert all(0 <= s <= 1 for s in scores) and is_png(fig.png)


def test_a_run_whose_data_moved_still_reports(tiny: Path, tmp_path: Path) -> None:
    """The report and plots render from the run's files alone; --data scores the pictures where they are."""
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    run = tmp_path / "run"
    api.train(data, approach="classical", out=run, features="hog", model="logreg")
    moved = tmp_path / "moved"
    data.rename(moved)
    path, _ = build_report(run, out=tmp_path / "r.html", top_k=2)
    page = path.read_text()
    assert "Learning curve" in page and "Confusion matrix" in page
    assert cli.main(["plot", str(run)]) == 0
    assert {"learning-curve.png", "confusion-matrix.png"} <= {p.name for p in (run / "plots").iterdir()}
    path, _ = build_report(run, moved, out=tmp_path / "r2.html", top_k=2)
    assert str(moved) in path.read_text()
    assert cli.main(["plot", str(run), "--data", str(moved)]) == 0


def test_a_model_no_better_than_guessing_gets_a_warning(classical_run: tuple[Path, dict], tmp_path: Path
                                                        ) -> None:
    from pawsight.evaluation import no_better_than_guessing
    from pawsight.run import read_evaluation, save_evaluation

    run = tmp_path / "run"
    shutil.copytree(classical_run[0], run)
    good = read_evaluation(run)
    assert no_better_than_guessing(good) is None
    assert "Warning:" not in build_report(run, out=tmp_path / "good.html", top_k=0)[0].read_text()
    # every picture answered "cats" with certainty: half right on a balanced set, a normal-looking model
    k = len(good["classes"])
    preds = [{**p, "predicted": "cats", "probabilities": [1.0] + [0.0] * (k - 1)}
             for p in good["predictions"]]
    cats = sum(p["label"] == "cats" for p in preds)
    bad = {**good, "predictions": preds, "accuracy": cats / len(preds), "name": None}
    save_evaluation(run, {k_: v for k_, v in bad.items() if k_ not in ("name", "format", "saved")})
    warning = no_better_than_guessing(read_evaluation(run))
    assert warning and "no better than always answering" in warning
    page = build_report(run, out=tmp_path / "bad.html", top_k=0)[0].read_text()
    assert 'class="warning"' in page and "has not learnt to tell the classes apart" in page


# -- explanations -------------------------------------------------------------------------------------------

def quadrant_share(heat: np.ndarray, corner: str) -> float:
    h = heat.shape[0] // 2
    part = heat[:h, :h] if corner == "top-left" else heat[h:, h:]
    return float(part.sum() / heat.sum())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_explanations_point_at_the_corner_that_decides(corner_run: tuple[Path, Path], method: str) -> None:
    run, data = corner_run
    model = load_model(run)
    for cls, corner in (("a", "top-left"), ("b", "bottom-right")):
        for path in sorted((data / cls).iterdir())[:3]:
            e = explain(model, path, method=method)
            assert e.target == cls and e.method == method and e.heatmap.shape == (128, 128)
            assert e.heatmap.min() >= 0
            assert quadrant_share(e.heatmap, corner) > 0.5, (path, method)  # a quarter of the area


@pytest.mark.slow
def test_training_writes_its_curves_and_gradcam_uses_the_last_feature_map(corner_run: tuple[Path, Path]
                                                                           ) -> None:
    run, _ = corner_run
    png = run / plots.PLOTS_DIR / "training-curves.png"
    assert is_png(png.read_bytes())  # drawn by api.train at the end of training
    model = load_model(run)
    net, _ = torch_network(model)
    import torch

    name, _ = target_layer(net, torch.zeros(1, 3, 128, 128))
    assert name == "features"  # the scratch CNN's last stage: a 4 x 4 map at 128 px


def test_feature_views_and_occlusion_for_classical_runs(classical_run: tuple[Path, dict], tiny: Path) -> None:
    run, _ = classical_run
    picture = next((tiny / "validation" / "cats").iterdir())
    e = explain(run, picture, method="features")
    size = load_model(run).preprocessing.size
    assert e.heatmap.shape == (size, size) and e.heatmap.max() > 0
    views = e.views
    assert views["hog_image"].shape == (views["hog_size"],) * 2 and views["hog_image"].max() > 0
    assert sum(views["color_shares"]) == pytest.approx(1.0, abs=1e-4)
    assert len(views["color_rgb"]) == len(views["color_shares"]) == int(np.prod(views["color_bins"]))
    assert is_png(render(e))
    with pytest.raises(Exception, match="Grad-CAM needs a deep-learning run"):
        explain(run, picture, method="gradcam")
    # a plain grey picture: HOG sees no edges, the colour histogram has one bin
    flat = feature_views(load_model(run), np.full((size, size, 3), 128, np.uint8))
    assert flat["hog_image"].max() == 0 and max(flat["color_shares"]) == pytest.approx(1.0)


# -- commands -----------------------------------------------------------------------------------------------

def test_plot_explain_commands(classical_run: tuple[Path, dict], tiny: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = classical_run
    assert cli.main(["plot", str(run), "--data", str(tiny), "--split", "validation"]) == 0
    written = {p.name for p in (run / plots.PLOTS_DIR).iterdir()}
    assert {"learning-curve.png", "confusion-matrix.png", "per-class.png", "roc-pr.png", "calibration.png",
            "top-losses.png"} <= written
    picture = next((tiny / "validation" / "dogs").iterdir())
    out = tmp_path / "why.png"
    assert cli.main(["explain", str(run), str(picture), "--out", str(out)]) == 0
    assert is_png(out.read_bytes()) and "occlusion" in capsys.readouterr().out
    bad = tmp_path / "not-a-picture.jpg"
    bad.write_text("hello")
    assert cli.main(["explain", str(run), str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot read") and not (tmp_path / "x.png").exists()


# -- the HTML report in a real browser ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run, holdout): the tiny set with the dogs folder renamed to an HTML tag; the holdout folder is a copy
    of its validation pictures where the picture with the highest loss has markup in its file name."""
    data = tmp_path_factory.mktemp("hostile") / "data"
    for split in ("train", "validation"):
        shutil.copytree(tiny / split / "cats", data / split / "cats")
        shutil.copytree(tiny / split / "dogs", data / split / XSS)
    run = data.parent / "run"
    api.train(data, approach="classical", out=run, features="hog,color", model="logreg")
    holdout = data.parent / "holdout"
    shutil.copytree(data / "validation", holdout)
    worst = Path(plots.top_losses(plots.load_evaluation(run), 1)[0]["path"])
    (holdout / worst.parent.name / worst.name).rename(holdout / worst.parent.name / "<b>bold.jpg")
    return run, holdout


def test_report_renders_in_chromium_with_names_escaped(hostile_run: tuple[Path, Path], tmp_path: Path
                                                        ) -> None:
    run, holdout = hostile_run
    out = tmp_path / "report.html"
    path, seconds = build_report(run, holdout, out=out, top_k=4)
    text = path.read_text()
    assert XSS not in text and html_escaped(XSS) in text  # never raw markup, always the escaped name
    assert "<b>bold.jpg" not in text and "&lt;b&gt;bold.jpg" in text
    # self-contained: no script, nothing fetched
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text
    assert seconds["total"] > 0
    with browser_page(allow=("file:",)) as page:
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        for section in SECTIONS:
            assert page.locator(f"section#{section}").count() == 1, section
            assert page.locator(f"section#{section} h2").is_visible()
        # every embedded picture decoded (a broken data URI would have naturalWidth 0)
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        assert widths and min(widths) > 0
        assert page.locator("img[src='x']").count() == 0
        assert page.get_by_text(XSS, exact=False).first.is_visible()
        assert page.locator("section#top-losses figure").count() == 4
        assert page.problems == []  # no console error, no dialog, nothing fetched but the file itself


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_report_command_and_saved_files(classical_run: tuple[Path, dict], tiny: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = classical_run
    out = tmp_path / "r.html"
    assert cli.main(["report", str(run), "--data", str(tiny), "--out", str(out), "--top-k", "3"]) == 0
    assert "report written to" in capsys.readouterr().out
    text = out.read_text()
    assert all(f'id="{s}"' in text for s in SECTIONS) and text.count("<figure>") == 3
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: run directory not found")
    json.dumps(plots.load_evaluation(run, tiny)["predictions"])  # predictions are plain JSON


def test_report_and_explain_never_replace_a_file_pawsight_did_not_write(tmp_path: Path) -> None:
    """--out naming someone's own file is refused and the file is left as it was; pawsight's own output may be
    replaced (the marker in the HTML head / the PNG Software chunk)."""
    from pawsight.report.html import GENERATOR
    from pawsight.report.plots import new_figure, to_png
    from pawsight.storage import PNG_MARKER, refuse_foreign_file

    notes = tmp_path / "notes.html"
    notes.write_text("<html>my notes</html>")
    with pytest.raises(PawsightError, match="not written by pawsight"):
        refuse_foreign_file(notes, GENERATOR.encode())
    assert notes.read_text() == "<html>my notes</html>"
    ours = tmp_path / "report.html"
    ours.write_text(f"<!DOCTYPE html><html><head>{GENERATOR}</head></html>")
    refuse_foreign_file(ours, GENERATOR.encode())  # pawsight's own report: may be replaced
    fig, _ = new_figure(2, 2)
    drawn = tmp_path / "map.png"
    drawn.write_bytes(to_png(fig))
    refuse_foreign_file(drawn, PNG_MARKER)
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(PawsightError):
        refuse_foreign_file(photo, PNG_MARKER)
    with pytest.raises(PawsightError, match="is a folder"):
        refuse_foreign_file(tmp_path, PNG_MARKER)
