"""Duplicates, conflicting labels and leaks, found with real photos and their re-encoded copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pawsight
from pawsight import dedup
from pawsight.cache import ImageCache
from pawsight.data import scan
from pawsight.dedup import drop_duplicates, find_duplicates, find_groups, near_pairs


def test_near_pairs_matches_brute_force_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    # a few planted near copies: flip 1-3 bits
    near = [(int(base[i]) ^ (1 << int(b))) for i, b in [(0, 5), (7, 60), (12, 1)]]
    near.append(int(base[3]) ^ 0b111)
    hashes = [int(h) for h in base] + near
    monkeypatch.setattr(dedup, "_CHUNK", 7)  # several chunks, pairs crossing chunk borders
    got = set(near_pairs(hashes, threshold=4))
    want = {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
            if bin(hashes[i] ^ hashes[j]).count("1") <= 4}
    assert got == want
    assert {(0, 40), (7, 41), (12, 42), (3, 43)} <= got


def test_find_groups_exact_near_transitive_and_far() -> None:
    a = 0x0F0F_0F0F_0F0F_0F0F
    groups = find_groups(
        ["h1", "h1", "h2", "h3", "h4", "h5"],
        [a, a, a ^ 0b11, a ^ 0b11 ^ 0b1100, a ^ (2**40 - 1), None])
    assert len(groups) == 1
    g = groups[0]
    assert sorted(g.members) == [0, 1, 2, 3]  # 3 joins through 2 (distance 2 from it, 4 from 0)
    assert g.kind == "near" and g.distance == 4
    exact = find_groups(["x", "x", "y"], [None, None, None])
    assert [(sorted(g.members), g.kind, g.distance) for g in exact] == [([0, 1], "exact", 0)]


def reencode(src: Path, dst: Path, scale: float = 0.8, quality: int = 70) -> None:
    """A different file of the same photo: resized and recompressed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.resize((int(im.width * scale), int(im.height * scale)), Image.BICUBIC).save(dst, quality=quality)


@pytest.fixture()
def messy(tmp_path: Path, tiny: Path) -> Path:
    """A pre-split folder with one exact duplicate, one conflicting label and one train/validation leak."""
    root = tmp_path / "messy"
    for split in ("train", "validation"):
        for c in ("cats", "dogs"):
            dest = root / split / c
            dest.mkdir(parents=True)
            for f in sorted((tiny / split / c).glob("*.jpg"))[:6]:
                shutil.copy(f, dest / f.name)
    cats = sorted((root / "train" / "cats").glob("*.jpg"))
    shutil.copy(cats[0], root / "train" / "cats" / "copy-of-first.jpg")  # exact, same class and split
    reencode(cats[1], root / "train" / "dogs" / "mislabelled.jpg")  # near copy under another class
    reencode(cats[2], root / "validation" / "cats" / "leaked.jpg", scale=0.6)  # near copy in validation
    return root


def test_report_sorts_duplicates_conflicts_and_leaks(messy: Path, tmp_path: Path) -> None:
    ds = scan(messy)
    report = find_duplicates(ds, ImageCache(tmp_path / "cache"))
    cats = sorted((messy / "train" / "cats").glob("cat*.jpg"))
    assert len(report.groups) == 3

    dups = report.duplicates
    assert len(dups) == 2  # the exact copy and the conflicting label live inside train
    exact = next(d for d in dups if d["kind"] == "exact")
    assert {Path(f["path"]).name for f in exact["files"]} == {cats[0].name, "copy-of-first.jpg"}
    assert not exact["conflicting_labels"]

    conflict, = report.conflicts
    assert conflict["kind"] == "near" and conflict["conflicting_labels"]
    assert {(Path(f["path"]).name, f["class"]) for f in conflict["files"]} == {
        (cats[1].name, "cats"), ("mislabelled.jpg", "dogs")}

    leak, = report.leaks
    assert leak["splits"] == ["train", "validation"]
    assert {Path(f["path"]).name for f in leak["files"]} == {cats[2].name, "leaked.jpg"}
    assert leak["distance"] <= dedup.NEAR_THRESHOLD


def test_clean_real_data_has_no_duplicates(tiny: Path) -> None:
    report = find_duplicates(scan(tiny))
    assert report.groups == []


def test_drop_duplicates_keeps_training_copy_and_drops_conflicts(messy: Path, tmp_path: Path) -> None:
    ds = scan(messy)
    kept, dropped = drop_duplicates(ds, ImageCache(tmp_path / "cache"))
    cats = sorted((messy / "train" / "cats").glob("cat*.jpg"))
    gone = {Path(d["path"]).name for d in dropped}
    # one of the exact pair (the later name), the leaked validation copy, both conflicting pictures
    assert gone == {"copy-of-first.jpg", "leaked.jpg", "mislabelled.jpg", cats[1].name}
    assert all(d["reason"] for d in dropped)
    assert next(d for d in dropped if d["path"].endswith("leaked.jpg"))["reason"].startswith("near leak of")
    kept_names = {s.path.name for s in kept.samples}
    assert cats[0].name in kept_names and cats[2].name in kept_names
    assert len(kept.samples) == len(ds.samples) - 4
    assert find_duplicates(kept, ImageCache(tmp_path / "cache")).groups == []


def test_train_with_drop_duplicates_records_what_it_dropped(messy: Path, tmp_path: Path) -> None:
    _, info = pawsight.train(messy, approach="classical", out=tmp_path / "run", features="color",
                             model="logreg", drop_duplicates=True)
    dropped = {Path(d["path"]).name for d in info["data"]["dropped_duplicates"]}
    assert {"copy-of-first.jpg", "leaked.jpg", "mislabelled.jpg"} <= dropped
    assert info["metrics"]["validation"]["n_images"] == 12  # leaked copy no longer scored
