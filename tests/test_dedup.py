"""Duplicates, conflicting labels and leaks, found with real photos and their re-encoded copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import pawsight
from pawsight import dedup
from pawsight.cache import ImageCache
from pawsight.data import scan
from pawsight.dedup import drop_duplicates, find_duplicates, find_groups, near_pairs


def all_pairs(hashes: list[int], threshold: int) -> list[tuple[int, int]]:
    """The reference: every pair compared (quadratic; what near_pairs did before multi-index hashing)."""
    h = np.asarray(hashes, dtype=np.uint64)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(h), 1024):
        dist = np.bitwise_count(h[start:start + 1024, None] ^ h[None, :])
        rows, cols = np.nonzero(dist <= threshold)
        keep = cols > rows + start
        pairs.extend(zip((rows[keep] + start).tolist(), cols[keep].tolist(), strict=True))
    return sorted(pairs)


def chunk_edges(threshold: int) -> list[int]:
    """Bit positions on both sides of every border between the threshold + 1 chunks of 64 bits."""
    sizes = [len(c) for c in np.array_split(np.arange(64), threshold + 1)]
    borders = np.cumsum(sizes)[:-1]
    return sorted({int(b) for border in borders for b in (border - 1, border)} | {0, 63})


def planted(n: int, threshold: int, seed: int) -> list[int]:
    """`n` random hashes plus near copies at every distance 0..threshold+1: flipped bits on chunk borders
    (one flip in each of several chunks, the case a wrong chunking misses) and at random places."""
    rng = np.random.default_rng(seed)
    hashes = [int(x) for x in rng.integers(0, 2**64, size=n, dtype=np.uint64)]
    edges = chunk_edges(threshold)
    for d in range(threshold + 2):
        for k in range(20):
            base = hashes[int(rng.integers(len(hashes)))]
            pool = edges if k % 2 == 0 and d <= len(edges) else list(range(64))
            bits = rng.choice(pool, size=d, replace=False)
            hashes.append(base ^ sum(1 << int(b) for b in bits))
    return [hashes[i] for i in rng.permutation(len(hashes))]


@pytest.mark.parametrize("threshold", range(7))
def test_near_pairs_equal_all_pairs_with_planted_copies(threshold: int) -> None:
    hashes = planted(3000, threshold, seed=threshold)
    want = all_pairs(hashes, threshold)
    assert near_pairs(hashes, threshold) == want
    assert len(want) >= 20 * (threshold + 1)  # the planted copies are there (random hashes rarely meet)


def test_near_pairs_on_20k_hashes_at_the_default_threshold() -> None:
    hashes = planted(20_000, dedup.NEAR_THRESHOLD, seed=42)
    assert near_pairs(hashes) == all_pairs(hashes, dedup.NEAR_THRESHOLD)


def test_near_pairs_splits_runs_sharing_a_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many hashes sharing most of their bits (blank pictures): big runs are split again on the other bits,
    and fewer varying bits than chunks means every pair; the same answer either way."""
    monkeypatch.setattr(dedup, "_BIG_RUN", 8)
    rng = np.random.default_rng(3)
    common = int(rng.integers(0, 2**64, dtype=np.uint64)) & ~0xFFF
    low = rng.integers(0, 2**12, size=1500)
    hashes = [common ^ int(x) for x in low] + planted(300, 4, seed=5)
    for threshold in (1, 2, 4, 6):
        assert near_pairs(hashes, threshold) == all_pairs(hashes, threshold), threshold
    few_bits = [common ^ int(x) for x in low[:300]]  # 12 varying bits, fewer than 14 chunks: all pairs
    assert near_pairs(few_bits, 13) == all_pairs(few_bits, 13)


def test_near_pairs_edge_cases() -> None:
    assert near_pairs([], 4) == [] and near_pairs([5], 4) == []
    assert near_pairs([1, 1, 3], -1) == []
    assert near_pairs([0, 2**64 - 1, 7], 64) == [(0, 1), (0, 2), (1, 2)]
    assert near_pairs([7, 7, 6, 7], 0) == [(0, 1), (0, 3), (1, 3)]
    assert near_pairs([0, 2**64 - 1], 63) == []


@given(st.lists(st.sampled_from([0, 1, 2**63, 2**13 - 1, 2**13, 2**26 + 2**25, 2**64 - 1])
                | st.integers(0, 2**64 - 1), max_size=60),
       st.integers(0, 8), st.lists(st.integers(0, 63), max_size=6))
@settings(max_examples=200, deadline=None)
def test_near_pairs_property(hashes: list[int], threshold: int, flips: list[int]) -> None:
    """Any hashes, any threshold, with near copies of the first made by flipping the given bits."""
    if hashes:
        hashes = hashes + [hashes[0] ^ sum(1 << b for b in set(flips[:k])) for k in range(len(flips) + 1)]
    assert near_pairs(hashes, threshold) == all_pairs(hashes, threshold)


@pytest.mark.timeout(60)
def test_many_identical_hashes_stay_cheap() -> None:
    """k copies of one hash are k(k-1)/2 pairs in near_pairs' answer, but find_groups unions distinct hashes
    only (the all-pairs version took minutes here: 20,000 copies are 200M pairs)."""
    rng = np.random.default_rng(1)
    same = 0x0123_4567_89AB_CDEF
    others = [int(x) for x in rng.integers(0, 2**64, size=5000, dtype=np.uint64)]
    pairs = near_pairs([same] * 2000 + [same ^ 0b1001] + others)
    assert len(pairs) == 2001 * 2000 // 2 and pairs[:2] == [(0, 1), (0, 2)] and pairs[-1] == (1999, 2000)
    hashes = [same] * 20_000 + [same ^ 0b1001] + others
    groups = find_groups([f"file{i}" for i in range(len(hashes))], hashes)
    assert [(len(g.members), g.kind, g.distance) for g in groups] == [(20_001, "near", 2)]


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


def test_find_groups_matches_a_union_of_every_pair() -> None:
    """The connected components equal what a union-find over every close pair gives, on random hashes with
    planted copies, repeated files, unknown pHashes and chains."""
    rng = np.random.default_rng(7)
    n = 600
    phashes: list[int | None] = [int(x) for x in rng.integers(0, 2**64, size=n, dtype=np.uint64)]
    content = [f"file{i}" for i in range(n)]
    for i in rng.choice(n, size=120, replace=False).tolist():  # near copies (0-5 bits off) of a random one
        j = int(rng.integers(n))
        bits = rng.choice(64, size=int(rng.integers(0, 6)), replace=False)
        phashes[i] = phashes[j] ^ int(sum(1 << int(b) for b in bits))  # type: ignore[operator]
    for i in rng.choice(n, size=40, replace=False).tolist():
        content[i] = content[int(rng.integers(n))]  # the same file twice
    for i in rng.choice(n, size=30, replace=False).tolist():
        phashes[i] = None
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            a, b = phashes[i], phashes[j]
            if content[i] == content[j] or (a is not None and b is not None and bin(a ^ b).count("1") <= 4):
                parent[find(j)] = find(i)
    expected: dict[int, list[int]] = {}
    for i in range(n):
        expected.setdefault(find(i), []).append(i)
    want = sorted(m for m in expected.values() if len(m) > 1)
    got = find_groups(content, phashes)
    assert [g.members for g in got] == want and len(want) > 50
    for g in got:
        assert g.kind == ("exact" if len({content[i] for i in g.members}) == 1 else "near")


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
