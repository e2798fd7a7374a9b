"""open_rgb / to_rgb / Preprocessing on every odd-but-valid picture and hostile file (tests/hostile.py)."""

from __future__ import annotations

import io
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from hostile import BLUE, GREEN, GREY, RED, gradient, make_zoo, noisy_jpeg
from pawsight.images import ImageError, Preprocessing, open_rgb, perceptual_hash, to_rgb


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("zoo")
    make_zoo(folder)
    return folder


def pixels(zoo: Path, name: str, **kw) -> np.ndarray:
    im = open_rgb(zoo / name, **kw)
    assert im.mode == "RGB"
    return np.asarray(im)


@pytest.mark.parametrize("name", ["photo.png", "photo.webp", "photo.bmp", "photo.tiff", "png-named.jpg"])
def test_lossless_formats_read_exactly(zoo: Path, name: str) -> None:
    np.testing.assert_array_equal(pixels(zoo, name), gradient())


def test_jpeg_close_to_source(zoo: Path) -> None:
    arr = pixels(zoo, "photo.jpg").astype(int)
    assert arr.shape == (48, 64, 3)
    assert np.abs(arr - gradient()).mean() < 3


def test_format_by_content_not_extension(zoo: Path) -> None:
    info: dict = {}
    open_rgb(zoo / "png-named.jpg", info=info)
    assert info == {"format": "PNG", "mode": "RGB", "width": 64, "height": 48}


def test_gif_first_frame_is_read(zoo: Path) -> None:
    arr = pixels(zoo, "anim.gif")
    assert (arr == RED).all()
    with Image.open(zoo / "anim.gif") as im:  # the file really has a different second frame
        assert im.n_frames == 2


def test_exif_orientation_makes_picture_upright(zoo: Path) -> None:
    info: dict = {}
    arr = pixels(zoo, "exif6.jpg", info=info)
    assert (info["width"], info["height"]) == (64, 48)  # as stored
    assert arr.shape == (64, 48, 3)  # as displayed: width and height swapped
    top, bottom = arr[:28].reshape(-1, 3).mean(0), arr[36:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50, top  # red on top
    assert bottom[2] > 200 and bottom[0] < 50, bottom  # blue at the bottom


def test_cmyk_colour_roughly_right(zoo: Path) -> None:
    mean = pixels(zoo, "cmyk.jpg").reshape(-1, 3).mean(0)
    assert mean[0] > 200 and mean[1] < 60 and mean[2] < 60, mean


def test_grey_modes(zoo: Path) -> None:
    assert (pixels(zoo, "grey-L.png") == 200).all()
    la = pixels(zoo, "grey-LA.png")
    assert (la[:, :32] == GREY).all()  # transparent half: grey background, not black or white
    assert (la[:, 32:] == 200).all()


def test_palette_modes(zoo: Path) -> None:
    assert (pixels(zoo, "palette-P.png") == GREEN).all()
    trns = pixels(zoo, "palette-trns.png")
    assert (trns[:, :32] == GREY).all()  # the transparent index becomes grey, not its palette colour
    assert (trns[:, 32:] == GREEN).all()


def test_rgba_transparent_pixels_become_grey(zoo: Path) -> None:
    arr = pixels(zoo, "rgba.png")
    assert (arr[:, :32] == GREY).all()  # fully transparent white -> grey 128
    assert (arr[:, 32:] == BLUE).all()


def test_16_bit_scaled_not_clipped(zoo: Path) -> None:
    arr = pixels(zoo, "deep-I16.png")
    assert (arr[:, :21] == 0).all()
    assert (arr[:, 22:42] == 128).all()  # 32768 -> 128
    assert (arr[:, 43:] == 255).all()  # 65535 -> 255


@pytest.mark.parametrize("mode, value, expected", [
    ("I", 65535, 255), ("I", 200, 200), ("I;16", 32768, 128), ("1", 1, 255), ("F", 0.5, 0),
])
def test_to_rgb_modes(mode: str, value: float, expected: int) -> None:
    im = Image.new(mode, (4, 3), value)
    out = to_rgb(im)
    assert out.mode == "RGB" and out.size == (4, 3)
    assert (np.asarray(out) == expected).all()


def test_to_rgb_la_and_pa() -> None:
    la = Image.new("LA", (2, 2), (10, 0))
    assert (np.asarray(to_rgb(la)) == GREY).all()
    opaque = Image.new("RGBA", (2, 2), (1, 2, 3, 255))
    assert (np.asarray(to_rgb(opaque)) == (1, 2, 3)).all()


def test_data_bytes_used_instead_of_reading(zoo: Path, tmp_path: Path) -> None:
    data = (zoo / "photo.png").read_bytes()
    arr = np.asarray(open_rgb(tmp_path / "not-there.png", data=data))
    np.testing.assert_array_equal(arr, gradient())


def test_draft_mode_keeps_both_sides_at_least_min_size(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    Image.fromarray(gradient(800, 600)).save(big, quality=90)
    assert open_rgb(big).size == (800, 600)
    w, h = open_rgb(big, min_size=224).size
    assert (w, h) == (400, 300)  # 1/2 scale: 1/4 would be 150 < 224
    assert open_rgb(big, min_size=100).size == (200, 150)


# -- hostile files -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, words", [
    ("empty.jpg", ["empty"]),
    ("truncated.jpg", ["truncated"]),
    ("garbled.jpg", ["not an image"]),
    ("text.png", ["not an image"]),
    ("dangling.jpg", ["dangling", "symlink"]),
    ("loop-a.jpg", ["symlink", "loop"]),
    ("loop-b.jpg", ["symlink", "loop"]),
    ("folder.jpg", ["directory"]),
    ("bomb.png", ["too large", "bomb"]),
])
def test_hostile_files_give_one_line_reason(zoo: Path, name: str, words: list[str]) -> None:
    with pytest.raises(ImageError) as err:
        open_rgb(zoo / name)
    reason = str(err.value)
    assert "\n" not in reason and len(reason) < 200
    for word in words:
        assert word in reason.lower(), reason


def test_hostile_via_preprocessing_load(zoo: Path) -> None:
    with pytest.raises(ImageError, match="truncated"):
        Preprocessing(32).load(zoo / "truncated.jpg")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read"):
        open_rgb(tmp_path / "nope.jpg")


def test_bomb_is_tiny_on_disk(zoo: Path) -> None:
    assert (zoo / "bomb.png").stat().st_size < 200


def test_truncated_really_is_a_prefix_of_a_valid_jpeg() -> None:
    data = noisy_jpeg()
    assert np.asarray(open_rgb("x.jpg", data=data)).shape == (240, 320, 3)


# -- Preprocessing -----------------------------------------------------------------------------------------
def test_center_crop_takes_the_middle_square() -> None:
    arr = np.zeros((100, 200, 3), np.uint8)  # 2:1 landscape
    arr[:, :50] = RED  # left quarter: cut away by a centre crop
    arr[:, 50:150] = GREEN
    arr[:, 150:] = BLUE
    out = Preprocessing(50, "center-crop")(Image.fromarray(arr))
    assert out.shape == (50, 50, 3) and out.dtype == np.uint8
    assert (out[:, 2:-2] == GREEN).all()


def test_center_crop_same_geometry_as_resize_then_crop() -> None:
    """The direct box resample must show the same square as 'resize short side, cut the middle'."""
    im = Image.fromarray(gradient(500, 375))
    out = Preprocessing(224, "center-crop")(im).astype(int)
    big = im.resize((299, 224), Image.BILINEAR)
    ref = np.asarray(big.crop((37, 0, 261, 224))).astype(int)
    assert np.abs(out - ref).max() <= 2


def test_squash_keeps_everything() -> None:
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, :50] = RED
    arr[:, 50:] = GREEN
    out = Preprocessing(40, "squash")(Image.fromarray(arr))
    assert out.shape == (40, 40, 3)
    assert (out[:, :8] == RED).all()  # the left quarter survives, squashed to 10 columns
    assert (out[:, 12:] == GREEN).all()


@pytest.mark.parametrize("size, mode", [(224, "center-crop"), (64, "squash"), (8, "center-crop")])
def test_preprocessing_shapes(zoo: Path, size: int, mode: str) -> None:
    for name in ("photo.jpg", "exif6.jpg", "grey-LA.png", "deep-I16.png"):
        out = Preprocessing(size, mode).load(zoo / name)  # type: ignore[arg-type]
        assert out.shape == (size, size, 3) and out.dtype == np.uint8


def test_preprocessing_tall_and_tiny_pictures() -> None:
    for w, h in [(30, 400), (400, 30), (3, 2), (224, 224)]:
        out = Preprocessing(224)(Image.new("RGB", (w, h), RED))
        assert out.shape == (224, 224, 3)
        assert (out == RED).all()


def test_preprocessing_key_and_round_trip() -> None:
    a, b = Preprocessing(224), Preprocessing(224, "squash")
    assert a.key != b.key
    assert Preprocessing(128).key != a.key
    assert "224" in a.key and "center-crop" in a.key
    assert Preprocessing.from_dict(b.to_dict()) == b
    assert Preprocessing.from_dict({"size": 96}) == Preprocessing(96)


@pytest.mark.parametrize("kw", [{"size": 4}, {"size": 4096}, {"mode": "stretch"}])
def test_preprocessing_rejects_bad_settings(kw: dict) -> None:
    with pytest.raises(ValueError):
        Preprocessing(**kw)


def test_perceptual_hash_matches_imagehash_on_a_thumbnail() -> None:
    """Same algorithm as imagehash.phash (only the thumbnail is made more cheaply): identical on 32x32."""
    im = Image.fromarray(gradient(32, 32)).convert("L").convert("RGB")
    rng = np.random.default_rng(3)
    noisy = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for picture in (im, noisy):
        assert perceptual_hash(picture) == str(imagehash.phash(picture))
        assert len(perceptual_hash(picture)) == 16


def test_perceptual_hash_stable_under_resize_and_reencode() -> None:
    rng = np.random.default_rng(4)
    base = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((30, 30, 1))).astype(np.uint8)  # 360x480 blocks
    im = Image.fromarray(base)
    buf = io.BytesIO()
    im.resize((240, 180)).save(buf, "JPEG", quality=70)
    copy = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    d = bin(int(perceptual_hash(im), 16) ^ int(perceptual_hash(copy), 16)).count("1")
    assert d <= 4
    other = Image.fromarray(np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((30, 30, 1))).astype(np.uint8))
    assert bin(int(perceptual_hash(im), 16) ^ int(perceptual_hash(other), 16)).count("1") > 10
