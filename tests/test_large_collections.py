"""Issue 16, large collections: commands read pictures in batches (never all at once), the decode cache stores
compressed rows under a size cap with least-recently-used eviction, an older cache is replaced, and the
neither score keeps a bounded reference set."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

import pawsight.cache as cache_module
from pawsight import api
from pawsight.cache import ImageCache, PoolRows, pool_roundtrip, valid_index
from pawsight.cachedir import cache_max, read_generation
from pawsight.errors import PawsightError
from pawsight.images import Preprocessing


def pictures(tiny: Path, split: str = "train", cls: str | None = None) -> list[Path]:
    classes = [cls] if cls else ["cats", "dogs"]
    return sorted(p for c in classes for p in (tiny / split / c).iterdir())


# -- 1. constant memory --------------------------------------------------------------------------------------
@pytest.fixture()
def at_most_64_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any read of more than 64 pictures at once fails (the tiny set has 96 training pictures)."""
    monkeypatch.setattr(PoolRows, "MAX_ROWS", 64)
    monkeypatch.setattr(cache_module, "BATCH_ROWS", 16)


def test_the_guard_itself_refuses_a_whole_collection(tiny: Path, tmp_path: Path, at_most_64_rows) -> None:
    decoded = ImageCache(tmp_path / "cache").load(pictures(tiny), Preprocessing(32))
    assert len(decoded.images) > 64
    with pytest.raises(MemoryError, match="MAX_ROWS"):
        np.asarray(decoded.images)
    assert decoded.images[:64].shape == (64, 32, 32, 3)


@pytest.mark.parametrize("approach, params", [
    ("transfer", {}),
    ("scratch", {"size": 32, "width": 8, "epochs": 1, "batch_size": 16}),
    ("classical", {"model": "logreg"}),  # the default features, daisy's visual words included
])
def test_train_and_evaluate_never_read_every_picture_at_once(approach: str, params: dict, tiny: Path,
                                                             tmp_path: Path, at_most_64_rows) -> None:
    _, info = api.train(tiny, approach=approach, out=tmp_path / "run", cache=ImageCache(tmp_path / "cache"),
                        **params)
    assert info["metrics"]["train_size"] > 64
    if approach != "scratch":  # one epoch of a tiny CNN learns little; what is tested here is memory
        assert info["metrics"]["validation"]["accuracy"] > 0.6
    result = api.evaluate(tmp_path / "run", tiny, split="all", cache=ImageCache(tmp_path / "cache"))
    assert len(result["predictions"]) > 64


def test_data_inspect_never_reads_every_picture(tiny: Path, tmp_path: Path, at_most_64_rows) -> None:
    from pawsight.inspect import inspect_data

    report = inspect_data(tiny, cache=ImageCache(tmp_path / "cache"))
    assert report["images"] > 64


def test_frozen_transfer_results_do_not_depend_on_the_batch(tiny: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Features computed batch by batch are the features computed at once: the same head, the same
    probabilities (batch size 16 against 4,096 rows)."""
    from pawsight.models.base import make_model

    monkeypatch.setenv("PAWSIGHT_CACHE", str(tmp_path / "features-a"))
    cache = ImageCache(tmp_path / "cache")
    tr = cache.load(pictures(tiny), Preprocessing(224, mode="center-crop"),
                    labels=[int(p.parent.name == "dogs") for p in pictures(tiny)])
    a = make_model("transfer").fit(tr.images, tr.labels, classes=["cats", "dogs"])
    monkeypatch.setenv("PAWSIGHT_CACHE", str(tmp_path / "features-b"))
    monkeypatch.setattr(cache_module, "BATCH_ROWS", 4)
    b = make_model("transfer").fit(tr.images, tr.labels, classes=["cats", "dogs"])
    np.testing.assert_allclose(a.head_weight_, b.head_weight_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.predict_proba(tr.images), b.predict_proba(tr.images), atol=1e-6)


# -- 2. bounded disk -----------------------------------------------------------------------------------------
def test_pool_stores_compressed_rows_close_to_the_pictures(tiny: Path, tmp_path: Path) -> None:
    prep = Preprocessing(224, mode="center-crop")
    paths = pictures(tiny)[:30]
    decoded = ImageCache(tmp_path / "cache").load(paths, prep)
    assert decoded.images.stored_bytes() / len(paths) <= 40 * 1024  # the bound, at 224 px
    for path, row in zip(paths, decoded.images, strict=True):
        exact = prep.load(path)
        np.testing.assert_array_equal(row, pool_roundtrip(exact))  # what the pool promises, exactly
        assert np.abs(row.astype(int) - exact).mean() < 3  # and close to the picture (0-255 levels)
    again = ImageCache(tmp_path / "cache").load(paths, prep)
    assert again.decoded == 0
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(decoded.images))
    mirrored = decoded.images.mirrored()
    np.testing.assert_array_equal(mirrored[3], decoded.images[3][:, ::-1])
    assert mirrored.keys() != decoded.images.keys()  # mirrored features are cached under other keys


def test_pictures_from_lossless_files_are_stored_losslessly(tmp_path: Path) -> None:
    """A PNG (here noise, JPEG's worst case) comes back exactly: a model trained on the pool sees what
    prediction, which decodes the file itself, sees."""
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(path)
    prep = Preprocessing(64)
    row = ImageCache(tmp_path / "cache").load([path], prep).images[0]
    np.testing.assert_array_equal(row, prep.load(path))


def test_least_recently_used_is_evicted_under_a_tiny_cap(tiny: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "SEGMENT_BYTES", 1)  # a segment per chunk: fine-grained eviction
    monkeypatch.setattr(cache_module, "APPEND_ROWS", 8)
    prep = Preprocessing(64)
    cats, dogs = pictures(tiny, cls="cats"), pictures(tiny, cls="dogs")
    a, b, c = cats[:24], dogs[:24], cats[24:32]
    cache = ImageCache(tmp_path / "cache")
    monkeypatch.setenv("PAWSIGHT_CACHE_MAX", "1G")
    sizes = {}
    for name, group in (("a", a), ("b", b)):
        sizes[name] = cache.load(group, prep).images.stored_bytes()
        time.sleep(0.05)
    assert cache.load(a, prep).decoded == 0  # a used again: b is now the least recently used
    time.sleep(0.05)
    cap = sizes["a"] + sizes["b"] + 2048  # room for a and b, not for c and the index as well
    monkeypatch.setenv("PAWSIGHT_CACHE_MAX", str(cap))
    cache.load(c, prep)
    pixels = tmp_path / "cache" / "pixels"
    assert sum(f.stat().st_size for f in pixels.rglob("*") if f.is_file()) <= cap
    assert cache.load(c, prep).decoded == 0  # the command's own pictures stay
    assert cache.load(a, prep).decoded == 0  # kept: used more recently than b
    again = cache.load(b, prep)
    assert 0 < again.decoded < len(b)  # b's oldest segments went: decoded again, and right
    for path, row in zip(again.paths, again.images, strict=True):
        np.testing.assert_array_equal(row, pool_roundtrip(prep.load(path)))
    assert all(len(e) == 3 for e in valid_index(pixels / prep.key).values())


def test_a_load_reads_the_pool_index_once_not_once_per_chunk(tiny: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Appending chunk after chunk reads only the index lines added since the last chunk: re-reading the
    whole index for each of a million pictures' ~4,000 chunks made `data inspect` quadratic."""
    monkeypatch.setattr(cache_module, "APPEND_ROWS", 4)
    parsed: list[int] = []
    real = cache_module._log_lines
    monkeypatch.setattr(cache_module, "_log_lines", lambda log: (parsed.append(len(log)), real(log))[1])
    paths = pictures(tiny)
    decoded = ImageCache(tmp_path / "cache").load(paths, Preprocessing(32))
    assert len(decoded.paths) == len(paths) >= 80  # 20 chunks of 4 rows
    log_bytes = len(paths) * len(f"{'0' * 32} seg-000001-00000000.jpgs 123456 12345\n")
    assert sum(parsed) <= 2 * log_bytes  # each line read about once; the old code read ~n/8 times as much


def test_two_writers_and_an_eviction_keep_every_index_entry_right(tiny: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer's incrementally kept index equals a full re-read after another process appended, compacted
    and evicted between its chunks, and every row it indexed decodes to its own picture."""
    monkeypatch.setattr(cache_module, "SEGMENT_BYTES", 1)  # a segment per chunk: eviction has units
    monkeypatch.setattr(cache_module, "APPEND_ROWS", 8)
    prep = Preprocessing(32)
    cats, dogs = pictures(tiny, cls="cats"), pictures(tiny, cls="dogs")
    root = tmp_path / "cache"
    one, other = ImageCache(root), ImageCache(root)
    pool = root / "pixels" / prep.key
    real_append = ImageCache._append_commit
    turns = iter(range(10**6))

    def interleaved(self: ImageCache, *args, **kwargs):
        if self is one and next(turns) % 2 == 1:  # between one's chunks: other appends, compacts, evicts
            theirs = other.load(dogs[:12] if next(turns) < 4 else dogs[12:20], prep).images.segment_paths()
            assert other.evict(keep=set(pool.glob("seg-*")) - set(theirs), cap=1) > 0  # only theirs go
        index = real_append(self, *args, **kwargs)
        if self is one:
            assert index == valid_index(pool)
        return index

    monkeypatch.setattr(ImageCache, "_append_commit", interleaved)
    decoded = one.load(cats, prep)
    assert decoded.decoded == len(decoded.paths) == len(cats)
    for path, row in zip(decoded.paths, decoded.images, strict=True):
        np.testing.assert_array_equal(row, pool_roundtrip(prep.load(path)))


def test_tables_written_by_two_loads_at_once_keep_both(tiny: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """files.json and meta.json hold both loads' pictures when another load wrote them between one load's
    writes (a load rewrites its own copy of a table only while nobody else has written it)."""
    monkeypatch.setattr(cache_module, "APPEND_ROWS", 8)
    monkeypatch.setattr(cache_module, "TABLES_SECONDS", 0.0)
    monkeypatch.setattr(cache_module, "TABLES_SHARE", 0)
    prep = Preprocessing(32)
    cats, dogs = pictures(tiny, cls="cats"), pictures(tiny, cls="dogs")
    root = tmp_path / "cache"
    one, other = ImageCache(root), ImageCache(root)
    real_append = ImageCache._append_commit
    calls = iter(range(10**6))

    def interleaved(self: ImageCache, *args, **kwargs):
        if self is one and next(calls) == 2:
            other.load(dogs, prep)
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(ImageCache, "_append_commit", interleaved)
    assert one.load(cats, prep).decoded == len(cats)
    files = json.loads((root / "files.json").read_text())
    meta = json.loads((root / "meta.json").read_text())
    assert len(files) == len(meta) == len(cats) + len(dogs)
    assert ImageCache(root).load(cats + dogs, prep).decoded == 0


def test_cache_info_shows_use_against_the_cap(tiny: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from pawsight.cli import main

    monkeypatch.setenv("PAWSIGHT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PAWSIGHT_CACHE_MAX", "2G")
    ImageCache(tmp_path / "cache").load(pictures(tiny)[:10], Preprocessing(32))
    assert main(["cache", "info", "--json"]) == 0
    cap = json.loads(capsys.readouterr().out)["cap"]
    assert cap["bytes"] == 2 * 2**30 and cap["used"] > 0 and cap["covers"] == ["pixels", "features"]
    assert main(["cache", "info"]) == 0
    assert "of 2048 MB" in capsys.readouterr().out
    monkeypatch.setenv("PAWSIGHT_CACHE_MAX", "lots")
    assert main(["cache", "info"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "PAWSIGHT_CACHE_MAX" in err[0]


@pytest.mark.parametrize("text, value", [("", 10 * 2**30), ("500M", 500 * 2**20), ("1.5GB", int(1.5 * 2**30)),
                                         ("123", 123), ("2 GiB", 2 * 2**30)])
def test_cache_max_values(monkeypatch: pytest.MonkeyPatch, text: str, value: int) -> None:
    monkeypatch.setenv("PAWSIGHT_CACHE_MAX", text)
    assert cache_max() == value


@pytest.mark.parametrize("text", ["-1G", "nan", "ten", "1X"])
def test_cache_max_nonsense_is_refused(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("PAWSIGHT_CACHE_MAX", text)
    with pytest.raises(PawsightError, match="PAWSIGHT_CACHE_MAX"):
        cache_max()


def test_an_older_cache_is_recognised_and_replaced(tiny: Path, tmp_path: Path) -> None:
    """A format-2 cache (raw rows in pixels/<key>/pool.u8, integer row numbers in index.json): its pools are
    deleted, the generation changes (an older pawsight reading them stops), the rest is reused."""
    prep = Preprocessing(32)
    paths = pictures(tiny)[:6]
    root = tmp_path / "cache"
    ImageCache(root).load(paths, prep)
    old = root / "pixels" / prep.key
    for f in old.iterdir():
        f.unlink()
    rows = np.stack([prep.load(p) for p in paths])
    (old / "pool.u8").write_bytes(rows.tobytes())
    meta = json.loads((root / "meta.json").read_text())
    (old / "index.json").write_text(json.dumps({h: i for i, h in enumerate(meta)}))
    other = root / "pixels" / "squash-48-v2"
    other.mkdir()
    (other / "pool.u8").write_bytes(b"\0" * 48 * 48 * 3)
    generation = read_generation(root)
    out = ImageCache(root).load(paths, prep)
    assert out.decoded == len(paths)
    assert not (old / "pool.u8").exists() and not other.exists()
    assert read_generation(root) != generation
    for p, row in zip(out.paths, out.images, strict=True):
        np.testing.assert_array_equal(row, pool_roundtrip(prep.load(p)))
    assert not [n for n in os.listdir(root) if n.startswith(".trash")]


# -- 3. a bounded neither reference --------------------------------------------------------------------------
def test_neither_reference_is_exact_below_the_limit_and_bounded_above() -> None:
    from pawsight.models.neither import fit_neither, unit

    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 16)).astype(np.float32)
    y = np.arange(300) % 2
    small = fit_neither(features, y, limit=300)
    np.testing.assert_allclose(small.bank.numpy(), unit(features).astype(np.float32))
    bounded = fit_neither(features, y, limit=100)
    assert bounded.bank.shape == (100, 16)
    assert "100 k-means centroids of 300" in bounded.describe()["reference"]
    np.testing.assert_allclose(np.linalg.norm(bounded.bank.numpy(), axis=1), 1, atol=1e-5)
    assert 0.5 * small.scale < bounded.scale < 2 * small.scale  # calibrated for the smaller reference


def test_a_runs_size_stops_growing_beyond_the_reference_limit(tiny: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import pawsight.models.neither as neither
    from pawsight.run import read_evaluation

    monkeypatch.setattr(neither, "MAX_REFERENCE", 40)
    cache = ImageCache(tmp_path / "cache")
    sizes = []
    for per_class in (30, None):  # 60 and 96 training pictures, both beyond the limit of 40
        out = tmp_path / f"run-{per_class}"
        api.train(tiny, approach="transfer", out=out, cache=cache, per_class=per_class)
        description = json.loads((out / "model.json").read_text())["neither"]
        assert description["bank"] == [40, 1280]
        assert read_evaluation(out)["unknown"] <= 3  # calibrated: the validation cats and dogs are answered
        sizes.append((out / "model.safetensors").stat().st_size)
    assert sizes[0] == sizes[1]


def test_ordered_map_keeps_order_and_a_bounded_window() -> None:
    """Results in input order, never more than `ahead` calls submitted and not consumed (Executor.map
    submits every call at once: a million futures before the first picture), and a consumer that stops
    early leaves nothing running."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pawsight.system import ordered_map

    started, lock = [0], threading.Lock()

    def work(i: int) -> int:
        with lock:
            started[0] += 1
        return i * i

    consumed, peak = 0, 0
    with ThreadPoolExecutor(4) as pool:
        for consumed, value in enumerate(ordered_map(pool, work, range(5000), ahead=16), start=1):
            assert value == (consumed - 1) ** 2
            peak = max(peak, started[0] - consumed)
        assert consumed == 5000 and peak <= 16
        started[0] = 0
        stream = ordered_map(pool, work, iter(range(10**6)), ahead=16)
        assert [next(stream) for _ in range(10)] == [i * i for i in range(10)]
        stream.close()
    assert started[0] <= 10 + 16


# -- 4. training memory does not grow with the collection ------------------------------------------------
def _rows(tmp_path: Path, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic features (two shifted clouds, an offset and unequal scales) and their labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + 4 + 0.8 * y[:, None] * rng.normal(size=d)
    return X.astype(np.float32), y


def test_row_file_reads_back_what_was_written(tmp_path: Path) -> None:
    from pawsight.storage import RowFile, row_batches

    X, _ = _rows(tmp_path, 500, 7)
    rows = RowFile(500, 7, tmp_path)
    rows[np.arange(500)[::-1]] = X[::-1]  # any order of positions
    assert list(tmp_path.iterdir()) == []  # no name on disk: nothing left behind
    np.testing.assert_array_equal(rows.read(0, 500), X)
    np.testing.assert_array_equal(rows.take([9, 3, 3, 499]), X[[9, 3, 3, 499]])
    idx = np.array([1, 2, 3, 50, 400])
    got = [(p, F) for p, F in row_batches(rows, 2, idx)]
    np.testing.assert_array_equal(np.concatenate([p for p, _ in got]), idx)
    np.testing.assert_array_equal(np.concatenate([F for _, F in got]), X[idx])
    rows.close()


@pytest.mark.parametrize("classes", [2, 3])
def test_streamed_head_is_scikit_learns_logistic_regression(tmp_path: Path, classes: int) -> None:
    """The head fitted from a file a batch at a time minimises scikit-learn's objective: the same
    coefficients, binary and multinomial."""
    from sklearn.linear_model import LogisticRegression

    from pawsight.models.transfer import row_moments, streamed_logistic
    from pawsight.storage import RowFile

    X, _ = _rows(tmp_path, 1200, 20)
    y = np.arange(len(X)) % classes
    X[:, :classes] += 1.5 * np.eye(classes)[y]
    rows = RowFile(len(X), X.shape[1], tmp_path)
    rows[:] = X
    mean, scale = row_moments(rows)
    np.testing.assert_allclose(mean, X.mean(0), rtol=1e-5)
    np.testing.assert_allclose(scale, X.std(0) + 1e-6, rtol=1e-4)
    coef, intercept, present = streamed_logistic(rows, y, 0.5, mean, scale)
    clf = LogisticRegression(C=0.5, max_iter=2000, tol=1e-5).fit((X - mean) / scale, y)
    np.testing.assert_array_equal(present, clf.classes_)
    np.testing.assert_allclose(coef, clf.coef_, atol=1e-4 * np.abs(clf.coef_).max())
    np.testing.assert_allclose(intercept, clf.intercept_, atol=1e-4 * np.abs(clf.coef_).max())


def _peak_bytes(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_head_and_neither_memory_does_not_grow_with_the_rows(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With the training features in a RowFile, fitting the head (C by cross-validation, the final fit, a
    learning-curve refit) and the neither score holds a bounded sample and a batch, not the rows: the peak
    allocation (tracemalloc, NumPy included) for 6,000 rows is about that for 1,500, and far below one copy
    of the 6,000 rows. (The thresholds are lowered so that small tables take the large-collection path.)"""
    import pawsight.models.neither as neither
    import pawsight.models.transfer as transfer
    from pawsight.storage import RowFile

    monkeypatch.setattr(transfer, "HEAD_IN_MEMORY", 300)
    monkeypatch.setattr(transfer, "STREAM_ROWS", 500)
    monkeypatch.setattr(neither, "MAX_REFERENCE", 100)
    monkeypatch.setattr(neither, "STREAM_ROWS", 500)
    monkeypatch.setattr(neither, "KMEANS_EPOCHS", 1)
    d = 128
    peaks = {}
    for n in (400, 1500, 6000):  # the first only imports what the fits import (not measured)
        X, y = _rows(tmp_path, n, d)
        rows = RowFile(n, d, tmp_path)
        rows[:] = X
        del X

        def fit(rows: RowFile = rows, y: np.ndarray = y, n: int = n) -> None:
            weight, bias, _, cv_accuracy = transfer.fit_linear_head(rows, y, 2, np.arange(n))
            assert cv_accuracy > 0.9
            transfer.fit_head_at(rows, y, np.arange(0, n, 3), 1.0, 2)  # a learning-curve refit
            assert neither.fit_neither(rows, y).bank.shape == (100, d)

        peaks[n] = _peak_bytes(fit)
        rows.close()
    one_copy = 6000 * d * 4
    assert peaks[6000] < 1.3 * peaks[1500] + 2**19, peaks
    assert peaks[6000] < 0.7 * one_copy, (peaks, one_copy)


def test_frozen_training_never_holds_every_feature(tiny: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Frozen transfer training reads its features from a RowFile: the in-memory (n, d) table of
    `_features` (inference's) is never built, for the training or the validation pictures."""
    from pawsight.models.transfer import TransferClassifier

    def refuse(*args, **kwargs):
        raise AssertionError("training built the whole in-memory feature table")

    monkeypatch.setattr(TransferClassifier, "_features", refuse)
    cache = ImageCache(tmp_path / "cache")
    prep = Preprocessing(224, mode="center-crop")
    tr = cache.load(pictures(tiny), prep, labels=[int(p.parent.name == "dogs") for p in pictures(tiny)])
    va = cache.load(pictures(tiny, "validation"), prep,
                    labels=[int(p.parent.name == "dogs") for p in pictures(tiny, "validation")])
    model = TransferClassifier().fit(tr.images, tr.labels, va.images, va.labels, classes=["cats", "dogs"])
    assert model.learning_curve_["validation_accuracy"][-1] > 0.6
    assert model.neither_ is not None
