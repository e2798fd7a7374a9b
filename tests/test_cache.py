"""ImageCache on the zoo of odd and hostile files: nothing lost, nothing raised, never a wrong picture."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hostile import HOSTILE, make_zoo
from pawsight.cache import ImageCache, pool_roundtrip, segment_names, valid_index
from pawsight.images import Preprocessing

PREP = Preprocessing(32)
REASONS = {"empty.jpg": "empty", "truncated.jpg": "truncated", "garbled.jpg": "not an image",
           "text.png": "not an image", "dangling.jpg": "dangling", "loop-a.jpg": "loop", "loop-b.jpg": "loop",
           "folder.jpg": "directory", "bomb.png": "too large"}
OS_UNREADABLE = {"dangling.jpg", "loop-a.jpg", "loop-b.jpg", "folder.jpg"}  # no bytes to hash: not cached
NOT_PICTURES = {"empty.jpg", "garbled.jpg", "text.png"}  # refused from their first bytes: never decoded


@pytest.fixture()
def zoo(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    valid, hostile = make_zoo(tmp_path / "zoo")
    return tmp_path / "zoo", sorted(valid), sorted(hostile)


def expected(path: Path, prep: Preprocessing = PREP) -> np.ndarray:
    """What the cache must return for `path`: the uncached reference pipeline, stored by the pool's codec
    (JPEG for a lossy file, lossless otherwise)."""
    with Image.open(path) as im:
        source = im.format
    return pool_roundtrip(prep.load(path), source)


def pool_file(cache: ImageCache, prep: Preprocessing = PREP) -> Path:
    """The pool's newest segment (where rows are appended)."""
    return cache.root / "pixels" / prep.key / segment_names(cache.root / "pixels" / prep.key)[-1]


def indexed_bytes(cache: ImageCache, prep: Preprocessing = PREP) -> int:
    return sum(n for _, _, n in valid_index(cache.root / "pixels" / prep.key).values())


def test_zoo_every_valid_kept_every_hostile_skipped(tmp_path: Path, zoo) -> None:
    folder, valid, hostile = zoo
    assert set(hostile) == set(HOSTILE)
    paths = [folder / n for n in sorted(valid + hostile)]  # interleaved on purpose
    cache = ImageCache(tmp_path / "cache")
    out = cache.load(paths, PREP, labels=list(range(len(paths))))
    assert [p.name for p in out.paths] == [p.name for p in paths if p.name in valid]
    assert out.images.shape == (len(valid), 32, 32, 3) and out.images.dtype == np.uint8
    assert out.decoded == len(paths) - len(OS_UNREADABLE) - len(NOT_PICTURES)
    for p, img, label in zip(out.paths, out.images, out.labels, strict=True):
        np.testing.assert_array_equal(img, expected(p), err_msg=p.name)
        assert paths[label] == p  # labels follow their files
    reasons = {Path(s.path).name: s.reason for s in out.skipped}
    assert set(reasons) == set(hostile)
    for name, word in REASONS.items():
        assert word in reasons[name].lower(), (name, reasons[name])
    for m, p in zip(out.meta, out.paths, strict=True):
        assert {"format", "mode", "width", "height", "phash"} <= set(m), p
        assert len(m["phash"]) == 16 and int(m["phash"], 16) >= 0
    assert len(set(out.hashes)) == len(valid) - 1  # photo.png and png-named.jpg: same bytes, one entry


def test_second_load_is_all_hits_with_identical_pixels(tmp_path: Path, zoo) -> None:
    folder, valid, hostile = zoo
    paths = [folder / n for n in valid + hostile]
    cache = ImageCache(tmp_path / "cache")
    first = cache.load(paths, PREP)
    size = pool_file(cache).stat().st_size
    second = ImageCache(tmp_path / "cache").load(paths, PREP)
    assert second.decoded == 0
    np.testing.assert_array_equal(first.images, second.images)
    assert first.paths == second.paths and first.hashes == second.hashes and first.meta == second.meta
    assert [s.to_dict() for s in first.skipped] == [s.to_dict() for s in second.skipped]
    assert pool_file(cache).stat().st_size == size


def test_order_subsets_and_duplicates(tmp_path: Path, zoo) -> None:
    folder, valid, _ = zoo
    paths = [folder / n for n in valid]
    cache = ImageCache(tmp_path / "cache")
    cache.load(paths, PREP)
    for chosen in (paths[::-1], paths[::3], [paths[2], paths[2], paths[0]], paths[4:9]):
        out = cache.load(chosen, PREP)
        assert out.decoded == 0 and out.paths == chosen
        for p, img in zip(chosen, out.images, strict=True):
            np.testing.assert_array_equal(img, expected(p), err_msg=p.name)
    assert cache.load([], PREP).images.shape == (0, 32, 32, 3)


def test_returned_pixels_are_private(tmp_path: Path, zoo) -> None:
    """Rows read from the pool are fresh arrays: writing into them must never change the cache, and the
    lazy rows themselves cannot be written."""
    folder, valid, _ = zoo
    paths = [folder / n for n in valid if n != "png-named.jpg"]  # distinct contents: one contiguous run
    cache = ImageCache(tmp_path / "cache")
    out = cache.load(paths, PREP)
    ref = np.asarray(out.images)
    batch = out.images[:]
    batch[:] = 7
    with pytest.raises(TypeError):
        out.images[0] = 7  # type: ignore[index]
    np.testing.assert_array_equal(out.images, ref)
    np.testing.assert_array_equal(cache.load(paths, PREP).images, ref)


def test_modified_file_redecodes_exactly_that_one(tmp_path: Path, zoo) -> None:
    folder, valid, _ = zoo
    paths = [folder / n for n in valid]
    cache = ImageCache(tmp_path / "cache")
    cache.load(paths, PREP)
    target = folder / "photo.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    out = cache.load(paths, PREP)
    assert out.decoded == 1
    row = out.paths.index(target)
    assert (out.images[row] == (10, 200, 30)).all()
    for p, img in zip(out.paths, out.images, strict=True):
        np.testing.assert_array_equal(img, expected(p), err_msg=p.name)


def test_rename_costs_no_decode_and_no_new_row(tmp_path: Path, zoo) -> None:
    folder, valid, _ = zoo
    paths = [folder / n for n in valid]
    cache = ImageCache(tmp_path / "cache")
    before = cache.load(paths, PREP)
    size = pool_file(cache).stat().st_size
    renamed = folder / "renamed.jpg"
    (folder / "photo.jpg").rename(renamed)
    paths = [renamed if p.name == "photo.jpg" else p for p in paths]
    after = cache.load(paths, PREP)
    assert after.decoded == 0  # re-read and re-hashed, not decoded
    assert pool_file(cache).stat().st_size == size
    np.testing.assert_array_equal(after.images, before.images)
    assert cache.load(paths, PREP).decoded == 0


def test_copy_of_a_file_shares_its_row(tmp_path: Path, zoo) -> None:
    folder, valid, _ = zoo
    cache = ImageCache(tmp_path / "cache")
    cache.load([folder / "photo.jpg"], PREP)
    size = pool_file(cache).stat().st_size
    (folder / "copy.jpg").write_bytes((folder / "photo.jpg").read_bytes())
    out = cache.load([folder / "photo.jpg", folder / "copy.jpg"], PREP)
    assert out.decoded == 0 and out.hashes[0] == out.hashes[1]
    assert pool_file(cache).stat().st_size == size


def test_two_sizes_kept_apart(tmp_path: Path, zoo) -> None:
    folder, valid, _ = zoo
    paths = [folder / n for n in valid]
    cache = ImageCache(tmp_path / "cache")
    small, big = Preprocessing(32), Preprocessing(48, "squash")
    a = cache.load(paths, small)
    b = cache.load(paths, big)
    assert a.images.shape[1:] == (32, 32, 3) and b.images.shape[1:] == (48, 48, 3)
    assert b.decoded == len(valid)
    assert cache.load(paths, small).decoded == 0 and cache.load(paths, big).decoded == 0
    for p, x, y in zip(paths, cache.load(paths, small).images, cache.load(paths, big).images, strict=True):
        np.testing.assert_array_equal(x, expected(p, small))
        np.testing.assert_array_equal(y, expected(p, big))
    assert pool_file(cache, small) != pool_file(cache, big)


def test_torn_pool_write_is_survived(tmp_path: Path, zoo) -> None:
    folder, valid, _ = zoo
    first, rest = [folder / n for n in valid[:5]], [folder / n for n in valid[5:]]
    cache = ImageCache(tmp_path / "cache")
    cache.load(first, PREP)
    with open(pool_file(cache), "ab") as fh:  # an interrupted writer left half a row
        fh.write(b"\x99" * 1000)
    out = cache.load(first, PREP)
    assert out.decoded == 0
    out = cache.load(first + rest, PREP)
    assert out.decoded == len(rest)
    assert pool_file(cache).stat().st_size == indexed_bytes(cache)  # the torn tail was cut off
    for p, img in zip(out.paths, out.images, strict=True):
        np.testing.assert_array_equal(img, expected(p), err_msg=p.name)


@pytest.mark.parametrize("damage", [b"{not json", b"[1, 2, 3]", b""])
def test_damaged_index_is_rebuilt(tmp_path: Path, zoo, damage: bytes) -> None:
    folder, valid, _ = zoo
    paths = [folder / n for n in valid]
    cache = ImageCache(tmp_path / "cache")
    cache.load(paths, PREP)
    (pool_file(cache).parent / "index.json").write_bytes(damage)
    out = cache.load(paths, PREP)
    assert out.decoded == len(valid)
    for p, img in zip(out.paths, out.images, strict=True):
        np.testing.assert_array_equal(img, expected(p), err_msg=p.name)
    assert cache.load(paths, PREP).decoded == 0


def test_index_pointing_past_the_pool_is_not_trusted(tmp_path: Path, zoo) -> None:
    folder, valid, _ = zoo
    paths = [folder / n for n in valid]
    cache = ImageCache(tmp_path / "cache")
    cache.load(paths, PREP)
    entries = sorted(valid_index(pool_file(cache).parent).values(), key=lambda e: e[1])
    with open(pool_file(cache), "r+b") as fh:  # pool lost its tail (e.g. restored from an old backup)
        fh.truncate(entries[2][1] + entries[2][2])  # the first three rows are whole
    out = cache.load(paths, PREP)
    assert out.decoded == len(valid) - 3
    for p, img in zip(out.paths, out.images, strict=True):
        np.testing.assert_array_equal(img, expected(p), err_msg=p.name)


@pytest.mark.parametrize("name", ["meta.json", "files.json"])
def test_damaged_meta_or_files_is_rebuilt(tmp_path: Path, zoo, name: str) -> None:
    folder, valid, hostile = zoo
    paths = [folder / n for n in valid + hostile]
    cache = ImageCache(tmp_path / "cache")
    first = cache.load(paths, PREP)
    (cache.root / name).write_text('{"truncated": ')
    out = cache.load(paths, PREP)
    np.testing.assert_array_equal(out.images, first.images)
    assert out.meta == first.meta
    assert {s.path for s in out.skipped} == {s.path for s in first.skipped}
    assert json.loads((cache.root / name).read_text())  # rewritten whole
    assert cache.load(paths, PREP).decoded == 0


def test_concurrent_writers(tmp_path: Path, zoo) -> None:
    """Two loaders (own ImageCache objects, as in two processes) filling one cache at once."""
    folder, valid, _ = zoo
    paths = [folder / n for n in valid]
    results: dict[int, object] = {}

    def run(k: int) -> None:
        order = paths if k % 2 else paths[::-1]
        results[k] = ImageCache(tmp_path / "cache").load(order, PREP, workers=2)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    out = ImageCache(tmp_path / "cache").load(paths, PREP)
    assert out.decoded == 0
    for p, img in zip(out.paths, out.images, strict=True):
        np.testing.assert_array_equal(img, expected(p), err_msg=p.name)
    rows = pool_file(ImageCache(tmp_path / "cache")).stat().st_size // (32 * 32 * 3)
    assert rows <= 4 * len(valid)  # races may waste a few rows, never more than one per writer and file


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_phash_finds_resized_reencoded_copies(tmp_path: Path, tiny: Path) -> None:
    originals = [p for cls in ("cats", "dogs") for p in sorted((tiny / "train" / cls).iterdir())[:4]]
    copies = []
    for k, src in enumerate(originals):
        with Image.open(src) as im:
            w, h = im.size
            dst = tmp_path / f"copy{k}.jpg"
            im.convert("RGB").resize((w * 2 // 3, h * 2 // 3), Image.BICUBIC).save(dst, "JPEG", quality=60)
            copies.append(dst)
    out = ImageCache(tmp_path / "cache").load(originals + copies, Preprocessing(64))
    assert len(out.paths) == 16
    ph = [m["phash"] for m in out.meta]
    n = len(originals)
    for k in range(n):
        assert hamming(ph[k], ph[n + k]) <= 4, originals[k].name
    others = [hamming(ph[a], ph[b]) for a in range(n) for b in range(a + 1, n)]
    assert min(others) > 4  # different photos are not near-duplicates


def test_cache_info_and_clear(tmp_path: Path, zoo, monkeypatch, capsys) -> None:
    """info counts what is there; clear frees the rebuildable parts (and only them), and the next load
    decodes again into identical pixels; one resolution can go alone; downloads stay unless named."""
    from pawsight.cachedir import REBUILT, cache_usage, clear_cache
    from pawsight.cli import main
    from pawsight.storage import RowStore

    folder, valid, _ = zoo
    paths = [folder / n for n in valid]
    root = tmp_path / "cache"
    cache = ImageCache(root)
    first = cache.load(paths, PREP)
    np.asarray(cache.load(paths, Preprocessing(16)).images)
    RowStore(root / "features" / "x").put(["a", "b"], np.ones((2, 4), np.float32))
    (root / "weights").mkdir()
    (root / "weights" / "w.safetensors").write_bytes(b"0" * 1000)

    usage = cache_usage(root)
    pools = usage["parts"]["pixels"]["preprocessings"]
    assert pools[PREP.key]["bytes"] == sum(f.stat().st_size for f in pool_file(cache).parent.iterdir()) > 0
    assert set(pools) == {PREP.key, Preprocessing(16).key}
    assert usage["parts"]["weights"] == {"bytes": 1000, "files": 1, "holds": "downloaded backbone weights",
                                         "rebuilt_automatically": False}
    assert usage["parts"]["features"]["files"] == 2
    assert usage["bytes"] == sum(p["bytes"] for p in usage["parts"].values())

    small = root / "pixels" / Preprocessing(16).key
    small_bytes = sum(f.stat().st_size for f in small.iterdir())  # pool + index
    assert clear_cache([f"pixels/{Preprocessing(16).key}"], root) == small_bytes
    assert not small.exists() and pool_file(cache).exists()

    freed = clear_cache(REBUILT, root)
    assert freed == sum(usage["parts"][p]["bytes"] for p in REBUILT) - small_bytes
    after = cache_usage(root)
    assert all(after["parts"][p]["bytes"] == 0 for p in REBUILT)
    assert after["parts"]["weights"]["bytes"] == 1000
    assert not [p.name for p in root.iterdir() if p.name.startswith(".trash")]

    again = cache.load(paths, PREP)
    assert again.decoded == first.decoded == len(paths)  # all decoded again, as on the first load
    np.testing.assert_array_equal(again.images, first.images)

    monkeypatch.setenv("PAWSIGHT_CACHE", str(root))
    capsys.readouterr()
    assert main(["cache", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["root"] == str(root)
    assert main(["cache", "clear", "nonsense"]) == 2
    assert main(["cache", "clear", "pixels/../weights"]) == 2
    assert "unknown cache part" in capsys.readouterr().err
    assert main(["cache", "clear", "--all"]) == 0
    assert "freed" in capsys.readouterr().out and cache_usage(root)["bytes"] == 0


def test_clear_during_a_load_stops_it_not_wrong_rows(tmp_path: Path, zoo, monkeypatch) -> None:
    """A clear between reading the index and using its row numbers (reader), or between appending rows and
    indexing them (writer), must stop that load with 'run it again'; the next load is correct."""
    import pawsight.cache as cache_module
    from pawsight.cachedir import clear_cache
    from pawsight.errors import PawsightError

    folder, valid, _ = zoo
    paths = [folder / n for n in valid]
    root = tmp_path / "cache"
    cache = ImageCache(root)
    cache.load(paths[:5], PREP)

    real_valid_index = ImageCache._valid_index

    def index_then_clear(self, pool_dir, prep):  # reader: the index is read, then the pool goes
        index = real_valid_index(self, pool_dir, prep)
        if self is cache:
            clear_cache(["pixels"], root)
            ImageCache(root).load(paths[5:], PREP)  # another process refills a new pool: rows 0.. are others'
        return index

    monkeypatch.setattr(ImageCache, "_valid_index", index_then_clear)
    with pytest.raises(PawsightError, match="cleared while this command was running"):
        cache.load(paths[:5], PREP)
    monkeypatch.setattr(ImageCache, "_valid_index", real_valid_index)

    real_decode = cache_module.decode_file
    calls = []

    def decode_then_clear(*args, **kwargs):  # writer: rows appended to a pool that is then deleted
        calls.append(1)
        if len(calls) == 1:
            clear_cache(["pixels"], root)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(cache_module, "decode_file", decode_then_clear)
    with pytest.raises(PawsightError, match="cleared while this command was running"):
        cache.load(paths[:3], Preprocessing(20))
    monkeypatch.setattr(cache_module, "decode_file", real_decode)

    out = cache.load(paths, PREP)
    for p, img in zip(out.paths, out.images, strict=True):
        np.testing.assert_array_equal(img, expected(p), err_msg=p.name)


def test_decode_failures_are_remembered_per_decoder_version(tmp_path: Path, zoo) -> None:
    """A failure found by this Pillow is not retried; one recorded by another Pillow version is (a file an
    older decoder could not read must not stay 'unreadable' after an upgrade until 'cache clear')."""
    import json

    from pawsight.images import DECODER

    folder, valid, _ = zoo
    bad, good = folder / "truncated.jpg", folder / "photo.jpg"
    cache = ImageCache(tmp_path / "cache")
    first = cache.load([bad, good], PREP)
    assert first.decoded == 2 and [Path(s.path).name for s in first.skipped] == ["truncated.jpg"]
    assert cache.load([bad, good], PREP).decoded == 0  # same decoder: the failure is remembered

    meta_path = cache.root / "meta.json"
    meta = json.loads(meta_path.read_text())
    [h_bad] = [h for h, m in meta.items() if "error" in m]
    assert meta[h_bad]["decoder"] == DECODER
    # The cache as an older Pillow left it: that one could read neither file.
    [h_good] = [h for h, m in meta.items() if "error" not in m]
    meta[h_bad]["decoder"] = meta[h_good]["decoder"] = "Pillow 1.0"
    meta[h_good] = {"error": "not an image (unknown or garbled format)", "decoder": "Pillow 1.0"}
    meta_path.write_text(json.dumps(meta))
    index_path = cache.root / "pixels" / PREP.key / "index.json"
    index_path.write_text(json.dumps({}))
    again = cache.load([bad, good], PREP)
    assert again.decoded == 2  # both tried again with this Pillow
    assert [p.name for p in again.paths] == ["photo.jpg"]  # and the readable one is no longer skipped
    np.testing.assert_array_equal(again.images[0], expected(good))


def test_interrupted_load_keeps_its_finished_chunks_and_leaves_no_unindexed_rows(
        tmp_path: Path, tiny: Path, monkeypatch) -> None:
    """Issue 14.9: Ctrl-C (or a kill) in the middle of decoding. The next run reuses the chunks already done,
    and the pool holds exactly one row per distinct picture: interruptions never make it grow."""
    import pawsight.cache as cache_module

    paths = sorted(p for p in tiny.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert len(paths) > 60
    monkeypatch.setattr(cache_module, "APPEND_ROWS", 16)
    monkeypatch.setattr(cache_module, "TABLES_SECONDS", 0.0)  # tables with every chunk: decoding is reused
    monkeypatch.setattr(cache_module, "TABLES_SHARE", 0)
    real, calls = cache_module.decode_file, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 50:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    cache = ImageCache(tmp_path / "cache")
    monkeypatch.setattr(cache_module, "decode_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.load(paths, PREP, workers=1)
    monkeypatch.setattr(cache_module, "decode_file", real)
    # a killed writer's tail: bytes appended but never indexed
    with open(pool_file(cache), "ab") as fh:
        fh.write(os.urandom(5 * 1000 + 7))
    again = cache.load(paths, PREP, workers=1)
    assert len(again.paths) == len(paths)
    assert again.decoded <= len(paths) - 32  # two finished chunks of 16 were reused, not decoded again
    distinct = len(set(again.hashes))
    assert len(valid_index(pool_file(cache).parent)) == distinct
    assert pool_file(cache).stat().st_size == indexed_bytes(cache)  # no unindexed bytes left
    for i in (0, len(paths) // 2, len(paths) - 1):
        assert np.array_equal(again.images[i], expected(again.paths[i]))


def test_cache_clear_deletes_only_in_a_marked_cache_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    """Issue 14.3: PAWSIGHT_CACHE pointed at a user's project: nothing there is cleared (nor written), one
    line; a cache pawsight made (or one an older pawsight wrote, recognised and marked) is cleared."""
    import hashlib

    from pawsight.cli import main

    project = tmp_path / "project"
    for name in ("features/notes.txt", "pixels/raw.bin", "meta.json", "files.json", "weights/w.bin",
                 "src/main.py"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(f"user's {name}")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in project.rglob("*") if p.is_file()}
    monkeypatch.setenv("PAWSIGHT_CACHE", str(project))
    for args in (["cache", "clear"], ["cache", "clear", "--all"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        assert "not empty and was not made by pawsight" in err[0]
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in project.rglob("*") if p.is_file()}
    assert after == before

    legacy = tmp_path / "legacy"  # what an older pawsight left: adopted, marked, cleared
    ImageCache(legacy).load([], PREP)
    (legacy / ".pawsight-folder").unlink()
    (legacy / "meta.json").write_text("{}")
    (legacy / "features").mkdir()
    (legacy / "features" / "x.npy").write_bytes(b"\0" * 1000)
    monkeypatch.setenv("PAWSIGHT_CACHE", str(legacy))
    import pawsight.cachedir

    pawsight.cachedir._claimed.clear()
    assert main(["cache", "clear"]) == 0
    assert "freed" in capsys.readouterr().out
    assert not (legacy / "features").exists() and (legacy / ".pawsight-folder").is_file()


def test_index_log_is_linear_folded_at_the_end_and_a_torn_line_is_never_read(tmp_path: Path, zoo) -> None:
    """Chunks append their index lines (index.log) instead of rewriting index.json each time; the end of a
    load folds the log into index.json. A killed writer's torn last line ("abc 1" of "abc 12") must never
    map a picture to the wrong row: only whole lines count, and the next writer cuts the fragment off."""
    root, valid, _ = zoo
    paths = [root / v for v in valid]
    cache = ImageCache(tmp_path / "cache")
    cache.load(paths[:3], PREP)
    pool_dir = pool_file(cache).parent
    assert not (pool_dir / "index.log").exists() and (pool_dir / "index.json").is_file()

    (pool_dir / "index.log").write_text("torn 0")  # no newline: a kill in the middle of a line
    assert "torn" not in valid_index(pool_dir)
    again = cache.load(paths, PREP)
    for p, pixels in zip(again.paths, again.images, strict=True):
        assert np.array_equal(pixels, expected(p))
    assert not (pool_dir / "index.log").exists()
    assert "torn" not in json.loads((pool_dir / "index.json").read_text())
