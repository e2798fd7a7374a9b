"""TransferClassifier on real photos (the tiny set): both modes learn, features are cached, the saved model
reproduces its predictions exactly and refuses damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pawsight.backbones import create_backbone
from pawsight.cache import ImageCache
from pawsight.cachedir import default_cache_dir
from pawsight.data import scan
from pawsight.errors import PawsightError
from pawsight.images import Preprocessing
from pawsight.models.base import make_model
from pawsight.models.transfer import TransferClassifier

torch.set_num_threads(2)


def decoded(tiny: Path, size: int):
    ds = scan(tiny)
    cache = ImageCache()
    prep = Preprocessing(size)
    train, validation = ds.split("train"), ds.split("validation")
    return ds.classes, cache.load_samples(train, prep), cache.load_samples(validation, prep)


@pytest.fixture(scope="module")
def frozen(tiny: Path) -> tuple[TransferClassifier, object]:
    classes, tr, va = decoded(tiny, 224)
    model = make_model("transfer", seed=0)
    assert isinstance(model, TransferClassifier) and model.preprocessing == Preprocessing(224, "center-crop")
    model.fit(tr.images, tr.labels, va.images, va.labels, classes=classes)
    return model, va


def test_frozen_features_learn_cats_and_dogs(frozen) -> None:
    model, va = frozen
    assert model.score(va.images, va.labels) >= 0.85  # chance is 0.5
    assert set(model.timings_) >= {"backbone", "features", "head"}
    proba = model.predict_proba(va.images[:5])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_features_are_cached_and_reused(frozen, monkeypatch) -> None:
    model, va = frozen
    shards = list((default_cache_dir() / "features").rglob("*.npy"))
    assert shards
    before = model.predict_proba(va.images)

    def no_extraction(*args, **kwargs):
        raise AssertionError("features should have come from the cache")

    monkeypatch.setattr(type(model._extractor()), "__call__", no_extraction)
    np.testing.assert_array_equal(model.predict_proba(va.images), before)


def test_save_load_identical_and_preprocessing_saved(frozen, tmp_path: Path, monkeypatch) -> None:
    model, va = frozen
    model.save(tmp_path)
    description = json.loads((tmp_path / "model.json").read_text())
    assert description["preprocessing"] == {"size": 224, "mode": "center-crop"}
    assert description["normalization"]["mean"] == [0.5, 0.5, 0.5]
    assert description["backbone"]["name"] == "efficientnet_lite0"
    loaded = TransferClassifier.load(tmp_path)
    assert loaded.preprocessing == model.preprocessing
    assert loaded.classes_ == model.classes_
    np.testing.assert_array_equal(loaded.predict_proba(va.images), model.predict_proba(va.images))
    # the same outputs when features must be recomputed (empty cache): the network itself was saved
    expected = model.predict_proba(va.images)
    monkeypatch.setenv("PAWSIGHT_CACHE", str(tmp_path / "empty-cache"))
    fresh = TransferClassifier.load(tmp_path)
    np.testing.assert_allclose(fresh.predict_proba(va.images), expected, atol=1e-5)
    assert list((tmp_path / "empty-cache" / "features").rglob("*.npy"))


def test_damaged_or_mismatched_model_refused(frozen, tmp_path: Path) -> None:
    model, _ = frozen
    model.save(tmp_path)
    blob = bytearray((tmp_path / "model.safetensors").read_bytes())
    blob[-100] ^= 0xFF
    (tmp_path / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(PawsightError, match="does not match model.json"):
        TransferClassifier.load(tmp_path)
    model.save(tmp_path)
    d = json.loads((tmp_path / "model.json").read_text())
    d["classes"] = ["a", "b", "c"]
    (tmp_path / "model.json").write_text(json.dumps(d))
    with pytest.raises(PawsightError, match="does not fit 3 classes"):
        TransferClassifier.load(tmp_path)
    d["classes"] = model.classes_
    d["backbone"]["weights_hash"] = "0" * 32
    (tmp_path / "model.json").write_text(json.dumps(d))
    with pytest.raises(PawsightError, match="do not match their recorded hash"):
        TransferClassifier.load(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(PawsightError):
        TransferClassifier.load(tmp_path)


def test_wrong_input_and_params_are_clear(frozen) -> None:
    model, va = frozen
    with pytest.raises(PawsightError, match="224x224"):
        model.predict_proba(np.zeros((2, 100, 100, 3), np.uint8))
    with pytest.raises(PawsightError, match="unknown transfer mode"):
        TransferClassifier(mode="sideways").fit(va.images, va.labels, classes=["cats", "dogs"])
    with pytest.raises(PawsightError, match="unknown backbone"):
        _ = TransferClassifier(model="nope").preprocessing


def test_weights_file_by_option(tiny: Path, tmp_path: Path) -> None:
    """--weights FILE: a test-written resnet18 safetensors file drives the whole fit/save/load cycle."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()},
              str(path))
    classes, tr, va = decoded(tiny, 64)
    model = make_model("transfer", model="resnet18", weights=path, size=64)
    assert model.preprocessing.size == 64
    model.fit(tr.images, tr.labels, classes=classes)
    assert model.spec_.name == "resnet18" and model.spec_.num_features == 512
    model.save(tmp_path / "run")
    loaded = TransferClassifier.load(tmp_path / "run")
    np.testing.assert_array_equal(loaded.predict_proba(va.images), model.predict_proba(va.images))


def test_train_evaluate_predict_through_the_api(tiny: Path, tmp_path: Path) -> None:
    import pawsight
    from pawsight.api import evaluate, predict

    _, info = pawsight.train(tiny, approach="transfer", out=tmp_path / "run")
    assert info["preprocessing"] == {"size": 224, "mode": "center-crop"}
    assert info["metrics"]["validation"]["accuracy"] >= 0.85
    assert json.loads((tmp_path / "run" / "model.json").read_text())["preprocessing"] == info["preprocessing"]
    result = evaluate(tmp_path / "run", tiny)
    assert result["accuracy"] == info["metrics"]["validation"]["accuracy"]
    cats = sorted((tiny / "validation" / "cats").iterdir())[:3]
    predictions, skipped = predict(tmp_path / "run", cats)
    assert len(predictions) == 3 and not skipped
    assert all(p["label"] in ("cats", "dogs") for p in predictions)


def test_finetune_learns_and_reloads(tiny: Path, tmp_path: Path) -> None:
    """Fine-tuning: 1 epoch at 96 px through training.fit_network; BatchNorm statistics stay frozen."""
    classes, tr, va = decoded(tiny, 96)
    model = make_model("transfer", mode="finetune", epochs=1, size=96, batch_size=16, seed=0)
    model.fit(tr.images, tr.labels, va.images, va.labels, classes=classes, run_dir=tmp_path / "run")
    assert len(model.history_) == 1 and (tmp_path / "run" / "checkpoint").is_dir()
    assert model.score(va.images, va.labels) >= 0.75  # chance is 0.5
    bn = next(m for m in model.net_.modules() if isinstance(m, torch.nn.BatchNorm2d))
    reference = next(m for m in create_backbone("efficientnet_lite0")[0].modules()
                     if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(bn.running_mean, reference.running_mean)  # ImageNet statistics kept
    assert not torch.equal(bn.weight, reference.weight)  # ...while the affine weights learned
    model.save(tmp_path / "saved")
    loaded = TransferClassifier.load(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "model.json").read_text())["tta"] is True
    np.testing.assert_allclose(loaded.predict_proba(va.images), model.predict_proba(va.images), atol=1e-6)
    # resume (`pawsight train --resume`): the finished checkpoint in run_dir is picked up, not retrained
    again = make_model("transfer", mode="finetune", epochs=1, size=96, batch_size=16, seed=0)
    again.fit(tr.images, tr.labels, va.images, va.labels, classes=classes, run_dir=tmp_path / "run")
    assert again.resumed_from_ == 1 and again.history_ == model.history_
    np.testing.assert_allclose(again.predict_proba(va.images), model.predict_proba(va.images), atol=1e-6)
