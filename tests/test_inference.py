"""pawsight.inference: one predictor for every approach, pictures in every form, one label decision, no
cache writes, scikit-learn compatible estimators."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone

import pawsight
from pawsight import api
from pawsight.cachedir import default_cache_dir
from pawsight.errors import PawsightError
from pawsight.inference import UNKNOWN, OnnxPredictor, Predictor, decide
from pawsight.inference import load as load_predictor
from pawsight.models.base import make_model
from pawsight.run import load_model


def pictures(tiny: Path, cls: str = "cats", n: int = 4) -> list[Path]:
    return sorted((tiny / "validation" / cls).iterdir())[:n]


def cache_files() -> set[str]:
    root = default_cache_dir()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "lock" not in p.name}


# -- decide --------------------------------------------------------------------------------------------------

def test_decide_is_argmax_or_unknown_above_the_threshold() -> None:
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    assert decide(proba, ["cats", "dogs"]) == ["cats", "dogs", "cats", "cats"]
    scores = np.array([0.1, 2.0, np.nan, 1.0])
    assert decide(proba, ["cats", "dogs"], scores) == ["cats", "dogs", "cats", "cats"]  # no threshold
    assert decide(proba, ["cats", "dogs"], scores, threshold=1.0) == ["cats", UNKNOWN, UNKNOWN, "cats"]
    assert decide(proba, ["cats", "dogs"], None, threshold=0.0) == ["cats", "dogs", "cats", "cats"]
    assert decide(np.zeros((0, 2)), ["cats", "dogs"], np.zeros(0), 1.0) == []
    with pytest.raises(ValueError):
        decide(proba, ["cats", "dogs", "birds"])
    with pytest.raises(ValueError):
        decide(proba, ["cats", "dogs"], np.zeros(3), 1.0)


# -- every input form ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def predictor(transfer_run: Path) -> Predictor:
    return pawsight.load(transfer_run)


def test_load_returns_the_predictor_with_the_run_description(predictor, transfer_run) -> None:
    assert isinstance(predictor, OnnxPredictor)  # the graph saved with the run (test_export.py)
    assert predictor.approach == "transfer" and predictor.classes_ == ["cats", "dogs"]
    assert predictor.preprocessing.size == 224 and predictor.info["approach"] == "transfer"
    assert predictor.engine == "onnx"


def test_every_input_form_gives_the_same_answer(predictor, tiny) -> None:
    path = pictures(tiny, "dogs", 1)[0]
    reference = predictor.predict_proba(str(path))
    assert reference.shape == (1, 2) and np.allclose(reference.sum(1), 1)
    with Image.open(path) as im:
        im.load()
        pil = im.copy()
    hwc = np.asarray(pil.convert("RGB"))  # any size: the run's preprocessing is applied
    prepared = predictor.preprocessing.load(path)  # already at the model's size: passes through
    forms = [path, str(path), path.read_bytes(), pil, hwc, prepared, prepared[None],
             np.stack([hwc, hwc])]
    for form in forms:
        proba = predictor.predict_proba(form)
        np.testing.assert_allclose(proba[:1], reference, atol=1e-4, err_msg=type(form).__name__)
    mixed = predictor.predict([path, pil, hwc, path.read_bytes(), prepared[None]])
    assert mixed == ["dogs"] * 5


def test_predict_returns_class_names_and_records(predictor, tiny) -> None:
    cats, dogs = pictures(tiny, "cats", 3), pictures(tiny, "dogs", 3)
    assert predictor.predict(cats + dogs) == ["cats"] * 3 + ["dogs"] * 3
    records = predictor.predict_records(cats[:1])
    assert set(records[0]) == {"label", "closest", "probability", "probabilities", "unknown_score",
                               "unknown_threshold", "summary"}
    assert records[0]["label"] == records[0]["closest"] == "cats"
    assert set(records[0]["probabilities"]) == {"cats", "dogs"}
    assert records[0]["probability"] == max(records[0]["probabilities"].values())
    assert records[0]["unknown_threshold"] == predictor.threshold
    assert records[0]["summary"] == f"cats {records[0]['probability']:.1%}"


def test_an_unknown_answer_names_the_closest_class_and_why() -> None:
    from pawsight.inference import answer_record

    record = answer_record("unknown", [0.058, 0.942], ["cats", "dogs"], 1.18, 1.0)
    assert record["closest"] == "dogs" and record["probability"] == 0.942
    assert record["summary"] == "unknown: closest dogs 94.2%, neither score 1.18 > threshold 1.00"
    nan = answer_record("unknown", [0.3, 0.7], ["cats", "dogs"], float("nan"), 1.0)
    assert nan["summary"] == "unknown: closest dogs 70.0%, its neither score could not be computed"


def test_predictor_matches_the_training_estimator_and_the_eager_module(predictor, transfer_run, tiny) -> None:
    X = np.stack([predictor.preprocessing.load(p) for p in pictures(tiny, "cats") + pictures(tiny, "dogs")])
    estimator = load_model(transfer_run)
    eager = load_predictor(transfer_run, engine="torch")
    assert eager.engine == "torch"
    np.testing.assert_allclose(predictor.predict_proba(X), estimator.predict_proba(X), atol=1e-5)
    np.testing.assert_allclose(eager.predict_proba(X), predictor.predict_proba(X), atol=1e-5)


def test_bad_pictures_are_one_clear_error(predictor, tmp_path) -> None:
    with pytest.raises(PawsightError, match="uint8"):
        predictor.predict(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(PawsightError, match="not an image"):
        predictor.predict(b"this is not a picture")
    with pytest.raises(PawsightError, match="cannot read a picture"):
        predictor.predict([{"a": 1}])
    with pytest.raises(PawsightError, match="height, width, 3"):
        predictor.predict(np.zeros((4, 10, 10, 5), np.uint8))
    missing = tmp_path / "gone.jpg"
    with pytest.raises(PawsightError, match="gone.jpg"):
        predictor.predict([missing])
    assert predictor.predict([]) == []


def test_predicting_writes_nothing_to_the_caches(transfer_run, classical_run, tiny) -> None:
    rng = np.random.default_rng(0)
    new_pictures = rng.integers(0, 256, (3, 90, 120, 3), dtype=np.uint8)  # never seen by any cache
    for run in (transfer_run, classical_run):
        p = pawsight.load(run)
        before = cache_files()
        p.predict(new_pictures)
        p.predict(pictures(tiny, "dogs", 2))
        assert cache_files() == before, run


def test_a_classical_run_predicts_through_the_same_interface_without_torch(classical_run, tiny) -> None:
    code = ("import sys, pawsight; p = pawsight.load(sys.argv[1]); "
            "print(p.approach, p.predict(sys.argv[2:]), 'torch' in sys.modules)")
    files = [str(f) for f in pictures(tiny, "cats", 2)]
    out = subprocess.run([sys.executable, "-c", code, str(classical_run), *files], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out[0] == "classical" and out[-1] == "False"
    p = pawsight.load(classical_run)
    assert p.predict_records(files)[0]["unknown_score"] is None
    with pytest.raises(PawsightError, match="threshold"):
        pawsight.load(classical_run, threshold=1.0)


def test_evaluate_goes_through_the_predictor(transfer_run, tiny, monkeypatch) -> None:
    """A spy on the waist: every probability evaluate reports comes from the loaded Predictor's forward pass,
    and every label from inference.decide (one answer on every surface)."""
    import pawsight.inference as inference

    seen: dict[str, list] = {"forward": [], "decide": []}
    real_load, real_decide = inference.load, inference.decide

    def load(*args, **kwargs):
        predictor = real_load(*args, **kwargs)
        real_forward = predictor.forward

        def forward(X):
            out = real_forward(X)
            seen["forward"].append(out[0])
            return out

        predictor.forward = forward
        return predictor

    def decide(*args, **kwargs):
        answers = real_decide(*args, **kwargs)
        seen["decide"].append(answers)
        return answers

    monkeypatch.setattr(inference, "load", load)
    monkeypatch.setattr(inference, "decide", decide)
    result = api.evaluate(transfer_run, tiny, save=False)
    assert result["accuracy"] >= 0.85 and result["unknown"] == 0
    assert result["accuracy_answered"] == result["accuracy"]
    proba = np.concatenate(seen["forward"])
    assert proba.shape == (result["n_images"], 2)
    assert np.allclose([p["probabilities"] for p in result["predictions"]], proba)
    decided = [a for answers in seen["decide"] for a in answers]
    assert [p["predicted"] for p in result["predictions"]] == decided


def test_api_predict_labels_files_and_reports_skips(transfer_run, tiny, tmp_path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    predictions, skipped = api.predict(transfer_run, [*pictures(tiny, "cats", 2), bad], top_k=2)
    assert [p["label"] for p in predictions] == ["cats", "cats"]
    assert [t["label"] for t in predictions[0]["top"]] == ["cats", "dogs"]
    assert len(skipped) == 1 and skipped[0].path == str(bad)


# -- scikit-learn compatibility ------------------------------------------------------------------------------

@pytest.mark.parametrize("approach,params", [("classical", {"model": "logreg", "features": "hog"}),
                                             ("transfer", {"mode": "frozen", "tta": True}),
                                             ("scratch", {"width": 8, "size": 32})])
def test_unfitted_estimators_clone_and_set_params(approach, params) -> None:
    model = make_model(approach, **params)
    assert model.get_params(deep=True) == model.get_params(deep=False)
    twin = clone(model)
    assert type(twin) is type(model) and twin is not model and twin.get_params() == model.get_params()
    assert model.set_params(seed=7) is model and model.get_params()["seed"] == 7
    assert twin.get_params()["seed"] == 0
    with pytest.raises(ValueError, match="invalid parameter"):
        model.set_params(no_such_option=1)
    assert approach in repr(model).lower() or type(model).__name__ in repr(model)


@pytest.mark.parametrize("run", ["classical_run", "transfer_run", "scratch_run"])
def test_fitted_estimators_clone_to_unfitted_copies(run, request) -> None:
    fitted = load_model(request.getfixturevalue(run))
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params()
    assert not hasattr(twin, "classes_") and hasattr(fitted, "classes_")


def test_a_scratch_run_answers_through_the_same_interface(scratch_run, tiny) -> None:
    p = pawsight.load(scratch_run)
    files = pictures(tiny, "cats", 2)
    assert p.approach == "scratch" and set(p.predict(files)) <= {"cats", "dogs"}
    X = np.stack([p.preprocessing.load(f) for f in files])
    np.testing.assert_allclose(p.predict_proba(X), load_model(scratch_run).predict_proba(X), atol=1e-5)


def test_an_encoded_png_in_memory_is_accepted(predictor) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 120, 40)).save(buf, "PNG")
    # a flat orange square is nothing like a cat or a dog: any answer, but a well-formed one
    assert predictor.predict(buf.getvalue())[0] in [*predictor.classes_, UNKNOWN]
    assert predictor.predict_proba(buf.getvalue()).shape == (1, 2)


def test_a_fallback_to_pytorch_is_never_silent(scratch_run: Path, monkeypatch, capsys) -> None:
    """Issue 15: when ONNX Runtime cannot take a model, prediction falls back to eager PyTorch — with one
    `note:` line saying so (it is slower), never silently; asked for ONNX explicitly, it is an error."""
    import pawsight.models.deep as deep
    from pawsight.inference import ModulePredictor
    from pawsight.run import load_model, read_run_info

    def cannot_export(*args, **kwargs):
        raise RuntimeError("operator not supported")

    monkeypatch.setattr(deep, "onnx_bytes", cannot_export)
    model, info = load_model(scratch_run), read_run_info(scratch_run)
    capsys.readouterr()
    predictor = ModulePredictor(model, info, None, engine="auto")
    notes = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert predictor.engine == "torch"
    assert len(notes) == 1 and notes[0].startswith("note: ONNX Runtime cannot run this model")
    with pytest.raises(PawsightError, match="cannot run this model with ONNX Runtime"):
        ModulePredictor(model, info, None, engine="onnx")
