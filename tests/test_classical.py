"""The classical approach end to end: each model on real photos, 3 classes, saving without pickle, the CLI."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save

from pawsight import api, cli
from pawsight.cache import ImageCache
from pawsight.data import scan
from pawsight.errors import PawsightError
from pawsight.models.base import make_model
from pawsight.models.classical import MODELS, ClassicalClassifier
from pawsight.run import load_model

FEATURES = "hog,color,lbp"


@pytest.fixture(scope="module")
def runs(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, dict, Path]]:
    """One run per model on the tiny cats-and-dogs set (features are cached, so only the first pays)."""
    out = {}
    for name in MODELS:
        run_dir = tmp_path_factory.mktemp(f"run-{name}")
        model, info = api.train(tiny, approach="classical", out=run_dir, overwrite=True, model=name,
                                features=FEATURES)
        out[name] = (model, info, run_dir)
    return out


@pytest.fixture(scope="module")
def validation(tiny: Path) -> np.ndarray:
    ds = scan(tiny)
    return ImageCache().load_samples(ds.split("validation"), ClassicalClassifier().preprocessing).images


@pytest.fixture(scope="module")
def heldout(full: Path) -> tuple[np.ndarray, np.ndarray]:
    """400 validation photos of the full set: 40 pictures cannot tell 60% from chance, 400 can (sd 2.5%)."""
    samples = [s for s in scan(full).split("validation") if s.label == 0][:200] + \
              [s for s in scan(full).split("validation") if s.label == 1][:200]
    d = ImageCache().load_samples(samples, ClassicalClassifier().preprocessing)
    return d.images, d.labels


@pytest.mark.parametrize("name", MODELS)
def test_each_model_beats_chance_on_real_photos(runs, heldout, name):
    model, info, _ = runs[name]
    assert info["metrics"]["validation"]["n_images"] == 40
    assert {"fit.extract", "fit.fit"} <= set(info["timings"])
    accuracy = model.score(*heldout)  # trained on 80 photos
    assert accuracy >= 0.56, f"{name}: {accuracy}"  # chance is 0.5; 0.56 is 2.4 standard deviations above


@pytest.mark.parametrize("name", MODELS)
def test_save_load_gives_identical_probabilities(runs, validation, name):
    model, _, run_dir = runs[name]
    validation = np.concatenate([validation, validation[:, ::-1]])  # more variety for the comparison
    loaded = load_model(run_dir)
    assert isinstance(loaded, ClassicalClassifier) and loaded.classes_ == ["cats", "dogs"]
    np.testing.assert_array_equal(loaded.predict_proba(validation), model.predict_proba(validation))
    d = json.loads((run_dir / "model.json").read_text())
    assert d["format"] == 1 and d["pipeline"][0]["class"].endswith("BlockScaler")
    assert not list(run_dir.glob("*.pkl")) and not list(run_dir.glob("*.joblib"))


def synthetic(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes that differ in colour and orientation, with noise: red blobs, vertical and horizontal
    stripes."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(3):
        for _ in range(n_per_class):
            x = rng.integers(0, 80, (64, 64, 3)).astype(np.int64)
            phase = rng.integers(0, 8)
            if label == 0:
                x[..., 0] += 150
            elif label == 1:
                x[:, (np.arange(64) + phase) % 16 < 8] += 150
            else:
                x[(np.arange(64) + phase) % 16 < 8, :] += 150
            images.append(np.clip(x, 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels)


@pytest.mark.parametrize("name", ["svm-rbf", "linear-svm", "knn", "forest"])
def test_three_classes(name):
    X, y = synthetic(12, seed=0)
    Xt, yt = synthetic(6, seed=1)
    model = ClassicalClassifier(features="hog,color", model=name, size=64, n_jobs=1)
    model.fit(X, y, classes=["red", "vertical", "horizontal"])
    proba = model.predict_proba(Xt)
    assert proba.shape == (18, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    assert model.score(Xt, yt) >= 0.9


def test_class_without_training_pictures_is_never_predicted():
    X, y = synthetic(8, seed=2)
    model = ClassicalClassifier(features="color", model="logreg", size=64, n_jobs=1)
    model.fit(X, y, classes=["red", "vertical", "horizontal", "unseen"])
    proba = model.predict_proba(X)
    assert proba.shape == (24, 4) and (proba[:, 3] == 0).all()


def test_search_is_cross_validated_and_recorded():
    X, y = synthetic(8, seed=3)
    model = ClassicalClassifier(features="color", model="logreg", size=64, search=True, n_jobs=1)
    model.fit(X, y, classes=["a", "b", "c"])
    values = [r["value"] for r in model.search_results_]
    assert len(values) == 5 and model.best_params_["model__C"] in values
    assert model.pipeline_.get_params()["model__C"] == model.best_params_["model__C"]
    quick = ClassicalClassifier(features="color", model="logreg", size=64, search=True, search_budget=0,
                                n_jobs=1).fit(X, y, classes=["a", "b", "c"])
    assert len(quick.search_results_) == 1  # the time budget stops the search after the first candidate


@pytest.mark.parametrize("name", ["logreg", "linear-svm"])  # the SVM's calibration folds get picture groups
def test_tta_makes_predictions_mirror_symmetric(name):
    X, y = synthetic(6, seed=4)
    model = ClassicalClassifier(features="hog,color", model=name, size=64, flip=True, tta=True, n_jobs=1)
    model.fit(X, y, classes=["a", "b", "c"])
    np.testing.assert_allclose(model.predict_proba(X), model.predict_proba(X[:, :, ::-1]), atol=1e-12)


def test_bad_parameters_are_clear_errors(tiny, tmp_path):
    with pytest.raises(PawsightError, match="unknown classical model 'svm-poly'"):
        api.train(tiny, approach="classical", out=tmp_path / "a", model="svm-poly")
    with pytest.raises(PawsightError, match="no option"):
        make_model("classical", gamma=2)  # (kernel is an option: exact or approximate svm-rbf)
    with pytest.raises(PawsightError, match="image size"):
        _ = ClassicalClassifier(size=4).preprocessing
    with pytest.raises(PawsightError, match="takes 64x64"):
        ClassicalClassifier(size=64).fit(np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1, 0, 1]),
                                         classes=["a", "b"])


# -- tampered model files ---------------------------------------------------------------------------------

@pytest.fixture
def copy_run(runs, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(runs["logreg"][2], run_dir)
    return run_dir


def edit_state(run_dir: Path, old: str, new: str) -> None:
    path = run_dir / "model.json"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def rewrite_arrays(run_dir: Path, change) -> None:
    """Change the safetensors and update the recorded hash, as a deliberate tamperer would."""
    import hashlib

    arrays = load_file(run_dir / "model.safetensors")
    change(arrays)
    blob = save(arrays)
    (run_dir / "model.safetensors").write_bytes(blob)
    d = json.loads((run_dir / "model.json").read_text())
    d["safetensors_sha256"] = hashlib.sha256(blob).hexdigest()
    (run_dir / "model.json").write_text(json.dumps(d))


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "this.s"])
def test_unknown_class_in_json_is_refused_without_importing_it(copy_run, name):
    edit_state(copy_run, '"__object__": "sklearn.linear_model._logistic.LogisticRegression"',
               f'"__object__": {json.dumps(name)}')
    had_this = "this" in sys.modules
    with pytest.raises(PawsightError, match="not an allowed model part"):
        load_model(copy_run)
    assert ("this" in sys.modules) == had_this  # importing `this` would print the Zen of Python


def test_unknown_reconstructor_is_refused(copy_run):
    edit_state(copy_run, '"call": null', '"call": "subprocess.call"')
    with pytest.raises(PawsightError, match="not an allowed model part"):
        load_model(copy_run)


def test_truncated_safetensors_is_refused(copy_run):
    import hashlib

    path = copy_run / "model.safetensors"
    blob = path.read_bytes()
    path.write_bytes(blob[:-100])
    with pytest.raises(PawsightError, match="does not match model.json"):
        load_model(copy_run)
    path.write_bytes(blob[: len(blob) // 2])  # cut, with a matching hash this time
    d = json.loads((copy_run / "model.json").read_text())
    d["safetensors_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (copy_run / "model.json").write_text(json.dumps(d))
    with pytest.raises(PawsightError, match="damaged or incompatible"):
        load_model(copy_run)


def test_mismatched_shapes_are_refused(copy_run):
    def shorten(arrays):
        key = next(k for k in arrays if k.endswith("mean_"))
        arrays[key] = arrays[key][:-3].copy()

    rewrite_arrays(copy_run, shorten)
    with pytest.raises(PawsightError, match="classical model .* (damaged|cannot be used)"):
        load_model(copy_run)


def test_wrong_format_version_and_missing_file_are_refused(copy_run):
    edit_state(copy_run, '"format": 1', '"format": 99')
    with pytest.raises(PawsightError, match="format 99"):
        load_model(copy_run)
    (copy_run / "model.safetensors").unlink()
    with pytest.raises(PawsightError, match="model.safetensors is missing"):
        load_model(copy_run)


# -- the command line -----------------------------------------------------------------------------------

def test_cli_train_evaluate_predict_with_bad_files(tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", str(tiny), "--approach", "classical", "--out", str(run_dir)]) == 0  # defaults
    assert "validation accuracy" in capsys.readouterr().out

    assert cli.main(["evaluate", str(run_dir), str(tiny), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "validation" and result["n_images"] == 40 and result["accuracy"] > 0.5

    val = tiny / "validation"
    good = sorted((val / "cats").iterdir())[:2] + sorted((val / "dogs").iterdir())[:1]
    (tmp_path / "notes.jpg").write_text("not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    bad = [tmp_path / "notes.jpg", tmp_path / "empty.png", tmp_path / "missing.jpg"]
    status = cli.main(["predict", str(run_dir), *map(str, good + bad)])
    out, err = capsys.readouterr()
    assert status == 1
    lines = [line.split("\t") for line in out.strip().splitlines()]
    assert [row[0] for row in lines] == [str(p) for p in good]
    assert all(row[1] in ("cats", "dogs") and 0.5 <= float(row[2]) <= 1 for row in lines)
    for p in bad:
        assert f"skipped {p}" in err


def test_svm_probabilities_never_contradict_the_margin():
    """Even on a few noisy points, where cross-validated margins are poor, the probability of the positive
    class rises with the SVM's decision value (a fitted negative slope would turn every answer around)."""
    from sklearn.svm import LinearSVC

    from pawsight.models.classical import MarginCalibrated

    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 5))
    y = (X[:, 0] + rng.normal(scale=2.0, size=24) > 0).astype(int)
    model = MarginCalibrated(LinearSVC(C=1.0), cv=3).fit(X, y)
    grid = rng.normal(size=(200, 5))
    order = np.argsort(model.decision_function(grid)[:, 1])
    assert model.slope_ >= 0
    assert (np.diff(model.predict_proba(grid)[order, 1]) >= -1e-12).all()


# -- svm-rbf at scale: the exact/approximate kernel rule (EXACT_SVM_MAX) ---------------------------------

def test_kernel_rule_switches_at_the_threshold():
    X, y = synthetic(8, seed=5)  # 24 pictures, 48 training rows with their mirrored copies
    at = ClassicalClassifier(features="hog,color", size=64, n_jobs=1, exact_max=48, components=20)
    above = ClassicalClassifier(features="hog,color", size=64, n_jobs=1, exact_max=47, components=20)
    at.fit(X, y, classes=["a", "b", "c"])
    above.fit(X, y, classes=["a", "b", "c"])
    assert at.kernel_ == "exact" and "48 training rows" in at.kernel_rule_
    assert "kernel" not in at.pipeline_.named_steps
    assert above.kernel_ == "approx" and "exact_max=47" in above.kernel_rule_
    assert type(above.pipeline_.named_steps["kernel"]).__name__ == "Nystroem"
    assert above.pipeline_.named_steps["kernel"].components_.shape[0] == 20
    forced = ClassicalClassifier(features="hog,color", size=64, n_jobs=1, kernel="exact", exact_max=0)
    assert forced.fit(X, y, classes=["a", "b", "c"]).kernel_ == "exact"
    Xt, yt = synthetic(6, seed=6)
    assert above.score(Xt, yt) >= 0.9  # a kernel that learned nothing would be at 1/3
    with pytest.raises(PawsightError, match="kernel must be one of"):
        ClassicalClassifier(kernel="fast").check_params()
    with pytest.raises(PawsightError, match="kernel=approx is for model svm-rbf"):
        ClassicalClassifier(kernel="approx", model="knn").check_params()


def test_approximate_kernel_on_real_photos_round_trips(tiny, tmp_path, validation, heldout):
    run_dir = tmp_path / "approx"
    model, info = api.train(tiny, approach="classical", out=run_dir, features=FEATURES, kernel="approx",
                            components=100)
    assert model.kernel_ == "approx"
    assert model.score(*heldout) >= 0.56  # chance is 0.5, as in test_each_model_beats_chance_on_real_photos
    d = json.loads((run_dir / "model.json").read_text())
    assert d["kernel"] == {"path": "approx", "rule": "kernel=approx was asked for"}
    assert [s["step"] for s in d["pipeline"]] == ["scale", "pca", "kernel", "model"]
    assert d["pipeline"][2]["class"] == "sklearn.kernel_approximation.Nystroem"
    loaded = load_model(run_dir)
    assert loaded.kernel_ == "approx"
    both = np.concatenate([validation, validation[:, ::-1]])
    np.testing.assert_array_equal(loaded.predict_proba(both), model.predict_proba(both))
    answers, skipped = api.predict(run_dir, [tiny / "validation"])
    assert not skipped and len(answers) == 40 and {a["label"] for a in answers} <= {"cats", "dogs"}
    assert info["learning_curve"]["train_sizes"][-1] == info["metrics"]["train_size"]  # all pictures
