"""Hand-made features: shapes, determinism, known answers on synthetic pictures, the feature cache."""

from __future__ import annotations

import numpy as np
import pytest

from pawsight import features as F
from pawsight.errors import PawsightError


def noise(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def flat(value: tuple[int, int, int], size: int = 64) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, np.uint8), (size, size, 3)).copy()


@pytest.fixture(scope="module")
def daisy() -> F.DaisyBoW:
    return F.DaisyBoW(size=64, words=16, fit_images=20).fit(noise(20, seed=1), seed=0, n_jobs=1)


def test_registry_and_parsing():
    assert set(F.FEATURES) >= {"hog", "color", "lbp", "daisy"}
    names = [e.name for e in F.parse_features("hog, color,lbp")]
    assert names == ["hog", "color", "lbp"]
    assert isinstance(F.create_feature("hog", cells=[8, 16]), F.HOG)
    with pytest.raises(PawsightError, match="unknown feature 'sift'"):
        F.parse_features("hog,sift")
    with pytest.raises(PawsightError, match="twice"):
        F.parse_features("hog,hog")
    with pytest.raises(PawsightError, match="bad parameters for the hog feature"):
        F.create_feature("hog", cellz=4)


@pytest.mark.parametrize(("extractor", "dim"), [
    (F.HOG(size=64), 7 * 7 * 2 * 2 * 9),
    (F.HOG(size=64, cells=(8, 16)), 7 * 7 * 36 + 3 * 3 * 36),
    (F.ColorHistogram(), 14 * 12 * 3 * 3),
    (F.ColorHistogram(levels=(1, 2)), 5 * 12 * 3 * 3),
    (F.LBP(size=64), 14 * (10 + 18)),
])
def test_shapes_and_determinism(extractor, dim):
    X = noise(3)
    a = np.stack([extractor.extract_one(x) for x in X])
    assert a.shape == (3, dim) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, np.stack([extractor.extract_one(x) for x in X]))
    assert not np.array_equal(a[0], a[1])  # different pictures, different features


def test_hog_vertical_edge_is_a_horizontal_gradient():
    image = flat((0, 0, 0))
    image[:, 32:] = 255  # dark left half, bright right half: the gradient points along x
    hog = F.HOG(size=64).extract_one(image).reshape(-1, 9).sum(axis=0)
    assert hog.argmax() == 0 and hog[0] > 5 * np.delete(hog, 0).max()
    turned = F.HOG(size=64).extract_one(image.transpose(1, 0, 2).copy()).reshape(-1, 9).sum(axis=0)
    assert turned.argmax() == 4  # a horizontal edge: vertical gradient, 90 degrees


@pytest.mark.parametrize(("rgb", "hue_bin"), [((255, 0, 0), 0), ((0, 255, 0), 4), ((0, 0, 255), 8)])
def test_color_histogram_of_a_pure_colour(rgb, hue_bin):
    h = F.ColorHistogram().extract_one(flat(rgb)).reshape(14, 12, 3, 3)  # cells, hue, sat., value
    expected = np.zeros((12, 3, 3))
    expected[hue_bin, 2, 2] = 1.0  # fully saturated and bright
    for cell in h:
        np.testing.assert_allclose(cell, expected, atol=1e-6)


def test_color_histogram_is_spatial():
    image = flat((255, 0, 0))
    image[:, 32:] = (0, 0, 255)  # red left, blue right
    h = F.ColorHistogram(levels=(1, 2)).extract_one(image).reshape(5, 12, 3, 3).sum(axis=(2, 3))
    assert h[0, 0] > 0 and h[0, 8] > 0  # whole picture: both colours
    assert h[1, 0] == 1 and h[1, 8] == 0 and h[2, 8] == 1 and h[2, 0] == 0  # top-left red, top-right blue


def test_lbp_of_a_flat_image_is_all_in_the_flat_bin():
    lbp = F.LBP(size=64, levels=(1, 2)).extract_one(flat((90, 90, 90)))
    first, second = lbp[:5 * 10].reshape(5, 10), lbp[5 * 10:].reshape(5, 18)
    assert (first[:, 8] == 1).all() and (np.delete(first, 8, axis=1) == 0).all()
    assert (second[:, 16] == 1).all() and (np.delete(second, 16, axis=1) == 0).all()


def test_daisy_words_are_learned_deterministically(daisy):
    again = F.DaisyBoW(size=64, words=16, fit_images=20).fit(noise(20, seed=1), seed=0, n_jobs=1)
    np.testing.assert_array_equal(daisy.get_state()["vocabulary"], again.get_state()["vocabulary"])
    assert daisy.get_state()["vocabulary"].shape == (16, 104)
    h = daisy.extract_one(noise(1, seed=5)[0])
    assert h.shape == (5 * 16,) and h.max() > 0
    np.testing.assert_allclose((h.reshape(5, 16) ** 2).sum(axis=1), 1, rtol=1e-5)  # Hellinger per cell


def test_daisy_on_a_blank_image_is_all_zero(daisy):
    assert not daisy.extract_one(flat((128, 128, 128))).any()


def test_daisy_needs_fitting_and_texture():
    with pytest.raises(PawsightError, match="must be fitted"):
        F.DaisyBoW(size=64).extract_one(flat((0, 0, 0)))
    with pytest.raises(PawsightError, match="textured patches"):
        F.DaisyBoW(size=64, words=16).fit(np.stack([flat((50, 50, 50))] * 3), n_jobs=1)


def test_daisy_state_round_trip_and_shape_check(daisy):
    fresh = F.DaisyBoW(size=64, words=16, fit_images=20)
    fresh.set_state(daisy.get_state())
    x = noise(1, seed=7)[0]
    np.testing.assert_array_equal(fresh.extract_one(x), daisy.extract_one(x))
    with pytest.raises(PawsightError, match="shape"):
        fresh.set_state({"vocabulary": np.zeros((15, 104), np.float32)})


def test_cache_key_changes_with_everything_that_changes_the_output(daisy):
    assert F.HOG(size=64).key == F.HOG(size=64).key
    assert F.HOG(size=64).key != F.HOG(size=32).key != F.HOG(size=32, orientations=8).key
    other = F.DaisyBoW(size=64, words=16, fit_images=20).fit(noise(20, seed=2), n_jobs=1)
    assert other.key != daisy.key


def test_feature_cache_hit_computes_nothing():
    X = noise(6, seed=1234)
    hog = F.HOG(size=64)
    first, computed = F.compute(hog, X, n_jobs=1)
    assert computed == 6
    again, computed = F.compute(hog, X, n_jobs=1)
    assert computed == 0
    np.testing.assert_array_equal(first, again)
    more = np.concatenate([X[:2], noise(1, seed=999)])  # two cached rows and a new picture
    part, computed = F.compute(hog, more, n_jobs=1)
    assert computed == 1
    np.testing.assert_array_equal(part[:2], first[:2])
    np.testing.assert_array_equal(part[2], hog.extract_one(more[2]))


def test_cache_survives_damaged_shards():
    X = noise(3, seed=4321)
    lbp = F.LBP(size=64)
    F.compute(lbp, X, n_jobs=1)
    for shard in F.feature_store(lbp).dir.glob("*.npy"):
        shard.write_bytes(b"garbage")
    values, computed = F.compute(lbp, X, n_jobs=1)
    assert computed == 3 and values.shape == (3, 14 * 28)


def test_concatenation_and_parallel_order():
    X = noise(10, seed=3)
    extractors = F.parse_features("hog,color")
    extractors[0] = F.HOG(size=64)
    both = F.extract(extractors, X, n_jobs=2, cache=False)
    assert both.shape == (10, 1764 + 14 * 108)
    one_by_one = np.stack([np.concatenate([e.extract_one(x) for e in extractors]) for x in X])
    np.testing.assert_array_equal(both, one_by_one)


def test_bad_input_shape_is_a_clear_error():
    with pytest.raises(PawsightError, match=r"\(n, height, width, 3\)"):
        F.compute(F.HOG(), np.zeros((2, 64, 64), np.uint8))


def test_processes_give_the_same_features_as_one_core(daisy):
    X = noise(6, seed=11)
    assert daisy.backend == "loky"  # DAISY holds the GIL: processes, measured in bench_classical --engines
    one = F.run_parallel(daisy.extract_one, X, n_jobs=1)
    two = F.run_parallel(daisy.extract_one, X, n_jobs=2, backend="loky")
    np.testing.assert_array_equal(np.stack(one), np.stack(two))


def test_daisy_vlad_encoding(daisy):
    vlad = F.DaisyBoW(size=64, words=16, fit_images=20, encoding="vlad", levels=(1,))
    vlad.set_state(daisy.get_state())
    v = vlad.extract_one(noise(1, seed=5)[0])
    assert v.shape == (16 * 104,)
    np.testing.assert_allclose(np.linalg.norm(v), 1, rtol=1e-5)
    assert not vlad.extract_one(flat((128, 128, 128))).any()
    assert vlad.key != F.DaisyBoW(size=64, words=16, fit_images=20, levels=(1,)).key
    with pytest.raises(PawsightError, match="unknown daisy encoding"):
        F.DaisyBoW(encoding="fisher")
