"""Duplicate pictures: the same photo twice in a class, under two labels, or in train *and* validation.

Exact duplicates share a content hash; near duplicates (re-encoded, resized, lightly edited copies) have
64-bit perceptual hashes (DCT pHash, computed once by the decode cache) within a small Hamming distance.
Copies are grouped transitively, then each group is judged:

- within one class and one split: wasted pictures that weigh a photo twice;
- across classes (conflicting labels): at least one label is wrong;
- across splits (a leak): validation or test accuracy is inflated, the model has seen the answer.

`drop_duplicates` keeps one picture per group (the training copy when there is one, so evaluation sets lose
the leaked copies) and drops every member of a group with conflicting labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cache import Decoded, ImageCache
from .data import SPLITS, DataSet, Sample
from .images import Preprocessing

# Largest Hamming distance between two 64-bit pHashes still called "the same photo". Re-encoded and resized
# copies land at 0-2; unrelated photos average ~32. 4 keeps false matches rare on tens of thousands of photos.
NEAR_THRESHOLD = 4
_ALL_BITS = (1 << 64) - 1
_BIG_RUN = 4096  # hashes sharing one chunk beyond which that run is split again (it costs its size squared)
_MAX_DEPTH = 1  # re-splits of a run: each costs up to threshold + 1 times the run again (measured: 1 is best)


@dataclass
class DuplicateGroup:
    """Indices into the analysed sample list of pictures that are copies of each other."""

    members: list[int]
    kind: str  # "exact" (identical bytes) or "near" (perceptually the same)
    distance: int  # largest pHash distance within the group (0 for exact copies)


def parse_phash(text: str | None) -> int | None:
    try:
        return int(str(text), 16) if text else None
    except ValueError:
        return None


def near_pairs(phashes: Sequence[int], threshold: int = NEAR_THRESHOLD) -> list[tuple[int, int]]:
    """All pairs (i < j, sorted) whose 64-bit hashes differ in at most `threshold` bits.

    Near-linear (multi-index hashing, see `_distinct_pairs`) instead of comparing every pair: 1M hashes take
    seconds, not hours. Copies of one hash are grouped first, so k identical hashes cost their k(k-1)/2 output
    pairs and nothing more."""
    h = np.asarray(phashes, dtype=np.uint64)
    n = len(h)
    if threshold < 0 or n < 2:
        return []
    if threshold >= 64:  # every pair of 64-bit hashes is within 64 bits
        i, j = np.triu_indices(n, 1)
        return list(zip(i.tolist(), j.tolist(), strict=True))
    values, first, inverse, counts = np.unique(h, return_index=True, return_inverse=True, return_counts=True)
    members = np.argsort(inverse, kind="stable")  # original indices grouped by value, ascending inside
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    parts_i, parts_j = [], []
    # pairs of identical hashes: (p, p + d) inside each run of `members`
    left = counts[inverse[members]] - (np.arange(n) - starts[inverse[members]]) - 1  # later copies in the run
    active = np.flatnonzero(left >= 1)
    d = 1
    while len(active):
        parts_i.append(members[active])
        parts_j.append(members[active + d])
        d += 1
        active = active[left[active] >= d]
    # pairs of distinct hashes: every member of one value with every member of the other
    a, b = _distinct_pairs(values, threshold)
    if len(a):
        ca, cb = counts[a], counts[b]
        reps = ca * cb
        pair = np.repeat(np.arange(len(a)), reps)
        offset = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        parts_i.append(members[starts[a][pair] + offset // cb[pair]])
        parts_j.append(members[starts[b][pair] + offset % cb[pair]])
    if not parts_i:
        return []
    i, j = np.concatenate(parts_i), np.concatenate(parts_j)
    lo, hi = np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)
    key = np.sort(lo * n + hi)
    return list(zip((key // n).tolist(), (key % n).tolist(), strict=True))


def _chunk_masks(free: int, parts: int) -> list[int] | None:
    """`free`'s set bits cut into `parts` masks of consecutive bits (sizes differ by at most one); None when
    there are fewer bits than parts."""
    bits = [b for b in range(64) if free >> b & 1]
    if len(bits) < parts:
        return None
    return [sum(1 << int(b) for b in group) for group in np.array_split(np.asarray(bits), parts)]


def _distinct_pairs(values: np.ndarray, threshold: int, free: int = _ALL_BITS,
                    depth: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (a, b) into `values` (distinct uint64) within `threshold` bits, each pair once.

    Multi-index hashing (pigeonhole): two hashes differing in at most t bits agree entirely on at least one of
    any t+1 disjoint chunks of their bits. For each chunk, sort by the chunk's bits; only hashes in one run of
    equal chunks are candidates, checked with the exact popcount. A pair equal on several chunks is kept only
    for the first of them (its earlier chunks all differ), so no set of found pairs is ever deduplicated.
    Runs are walked as diagonals (position p against p + d, for d = 1, 2, ...) over the positions whose run is
    still long enough: the work is the number of candidates, memory O(len(values)).

    Skewed hashes (blank pictures, say): only the bits that vary are chunked (`free`, minus bits equal in
    all `values`), and a run larger than `_BIG_RUN`, which would cost its size squared, is split again the
    same way on its other bits (it agrees on this chunk, so any difference is there), at most `_MAX_DEPTH`
    times; deeper, its candidates are walked as they are (quadratic in that run, memory still bounded).
    """
    n = len(values)
    none = np.empty(0, np.int64)
    if n < 2:
        return none, none
    free &= int(np.bitwise_or.reduce(values ^ values[0]))  # a bit equal in all values never differs
    masks = _chunk_masks(free, threshold + 1)
    if masks is None:  # at most `threshold` bits vary: every pair is within the threshold
        a, b = np.triu_indices(n, 1)
        return a.astype(np.int64), b.astype(np.int64)
    big = _BIG_RUN if depth < _MAX_DEPTH else n
    masks_u = [np.uint64(m) for m in masks]
    zero = np.uint64(0)
    out_a, out_b = [], []

    def first_chunk(x: np.ndarray, c: int) -> np.ndarray:
        """Positions in `x` (xors of candidate pairs) within the threshold whose first equal chunk is `c`."""
        idx = np.flatnonzero(np.bitwise_count(x) <= threshold)  # few survive: check their chunks only
        if c and len(idx):
            xs = x[idx]
            keep = np.ones(len(idx), dtype=bool)
            for earlier in masks_u[:c]:
                keep &= (xs & earlier) != zero
            idx = idx[keep]
        return idx

    for c, mask in enumerate(masks_u):
        key = values & mask
        order = np.argsort(key, kind="stable")
        sorted_key, sorted_values = key[order], values[order]
        run_start = np.flatnonzero(np.concatenate(([True], sorted_key[1:] != sorted_key[:-1])))
        run_size = np.diff(np.concatenate((run_start, [n])))
        for s, k in zip(run_start[run_size > big].tolist(), run_size[run_size > big].tolist(), strict=True):
            sub = order[s:s + k]
            a, b = _distinct_pairs(values[sub], threshold, free & ~masks[c], depth + 1)
            ok = first_chunk(values[sub[a]] ^ values[sub[b]], c)
            out_a.append(sub[a[ok]])
            out_b.append(sub[b[ok]])
        size = np.repeat(np.where(run_size > big, 0, run_size), run_size)
        left = np.repeat(run_start + run_size, run_size) - np.arange(n) - 1  # later positions in the run
        left[size == 0] = 0
        active = np.flatnonzero(left >= 1)
        d = 1
        while len(active):
            found = active[first_chunk(sorted_values[active] ^ sorted_values[active + d], c)]
            out_a.append(order[found])
            out_b.append(order[found + d])
            d += 1
            active = active[left[active] >= d]
    if not out_a:
        return none, none
    return np.concatenate(out_a).astype(np.int64), np.concatenate(out_b).astype(np.int64)


def find_groups(content_hashes: Sequence[str], phashes: Sequence[int | None],
                threshold: int = NEAR_THRESHOLD) -> list[DuplicateGroup]:
    """Groups (size >= 2) of copies among pictures given by content hash and pHash (None: unknown).

    The groups are the connected components of a graph whose edges join each picture to the first one with
    its content hash, to the first one with its pHash, and the first pictures of pHashes within `threshold`:
    a few arrays of n integers (a union-find over Python lists, ~450 MB at a million pictures, is not)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(content_hashes)
    if n < 2:
        return []
    _, exact = np.unique(np.asarray(content_hashes, dtype=object).astype(str), return_inverse=True)
    _, first_exact = np.unique(exact, return_index=True)
    src, dst = [np.arange(n)], [first_exact[exact]]
    known = np.asarray([i for i, p in enumerate(phashes) if p is not None], dtype=np.int64)
    values = np.zeros(0, np.uint64)
    if threshold >= 0 and len(known) > 1:
        # distinct pHashes only: k pictures with one pHash are k-1 edges, not k(k-1)/2 pairs
        values, first, inverse = np.unique(np.asarray([phashes[i] for i in known], dtype=np.uint64),
                                           return_index=True, return_inverse=True)
        src.append(known)
        dst.append(known[first[inverse]])
        a, b = _distinct_pairs(values, threshold)
        src.append(known[first[a]])
        dst.append(known[first[b]])
    rows, cols = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    order = np.argsort(component, kind="stable")  # members of a group in input order
    starts = np.flatnonzero(np.r_[True, component[order][1:] != component[order][:-1], True])
    groups = []
    for s, e in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        if e - s < 2:
            continue
        idx = order[s:e].tolist()
        same = len({int(exact[i]) for i in idx}) == 1
        distance = 0 if same else _max_distance([p for i in idx if (p := phashes[i]) is not None])
        groups.append(DuplicateGroup(idx, "exact" if same else "near", distance))
    groups.sort(key=lambda g: g.members[0])
    return groups


def _max_distance(phashes: Sequence[int]) -> int:
    """Largest Hamming distance among `phashes` (distinct values, in blocks: a big group stays bounded)."""
    u = np.unique(np.asarray(phashes, dtype=np.uint64))
    blocks = (np.bitwise_count(u[s:s + 1024, None] ^ u[None, :]).max() for s in range(0, len(u), 1024))
    return int(max(blocks, default=0))


@dataclass
class DuplicateReport:
    """Copies among the readable pictures of a data set, sorted into the three kinds of trouble."""

    samples: list[Sample]
    groups: list[DuplicateGroup]
    classes: list[str]

    def describe(self, group: DuplicateGroup) -> dict[str, Any]:
        files = [{"path": str(self.samples[i].path), "class": self.classes[self.samples[i].label],
                  "split": self.samples[i].split} for i in group.members]
        return {"kind": group.kind, "distance": group.distance,
                "conflicting_labels": len({f["class"] for f in files}) > 1,
                "splits": sorted({f["split"] for f in files}, key=SPLITS.index), "files": files}

    def _spans_splits(self, g: DuplicateGroup) -> bool:
        return len({self.samples[i].split for i in g.members}) > 1

    @property
    def duplicates(self) -> list[dict[str, Any]]:
        """Groups inside one split (same class, or conflicting labels)."""
        return [self.describe(g) for g in self.groups if not self._spans_splits(g)]

    @property
    def leaks(self) -> list[dict[str, Any]]:
        """Groups spanning train/validation/test."""
        return [self.describe(g) for g in self.groups if self._spans_splits(g)]

    @property
    def conflicts(self) -> list[dict[str, Any]]:
        """Groups whose copies carry different labels (in any split)."""
        return [d for d in map(self.describe, self.groups) if d["conflicting_labels"]]

    def kept(self, g: DuplicateGroup) -> int:
        """The member of a group that stays: the training copy when there is one, then the first path."""
        return min(g.members, key=lambda i: (SPLITS.index(self.samples[i].split), str(self.samples[i].path)))

    def to_drop(self) -> dict[int, str]:
        """Sample index -> why it goes: one copy per group stays, conflicting groups go entirely."""
        drop: dict[int, str] = {}
        for g in self.groups:
            labels = {self.samples[i].label for i in g.members}
            if len(labels) > 1:
                names = ", ".join(sorted(self.classes[label] for label in labels))
                for i in g.members:
                    drop[i] = f"{g.kind} copies carry conflicting labels ({names})"
                continue
            keep = self.kept(g)
            for i in g.members:
                if i != keep:
                    s = self.samples[i]
                    what = "leak" if s.split != self.samples[keep].split else "duplicate"
                    drop[i] = f"{g.kind} {what} of {self.samples[keep].path} ({self.samples[keep].split})"
        return drop


def report_from_decoded(ds: DataSet, samples: Sequence[Sample], decoded: Decoded,
                        threshold: int = NEAR_THRESHOLD) -> DuplicateReport:
    """Duplicate report for `samples` whose pictures the cache returned as `decoded` (bad files excluded)."""
    kept = decoded.kept_of(samples)
    phashes = [parse_phash(m.get("phash")) for m in decoded.meta]
    return DuplicateReport(kept, find_groups(decoded.hashes, phashes, threshold), ds.classes)


def find_duplicates(ds: DataSet, cache: ImageCache | None = None, prep: Preprocessing | None = None,
                    threshold: int = NEAR_THRESHOLD) -> DuplicateReport:
    """Decode (or reuse from the cache) every picture of `ds` and report its copies."""
    cache = cache or ImageCache()
    decoded = cache.load_samples(ds.samples, prep or Preprocessing(), desc="checking duplicates")
    return report_from_decoded(ds, ds.samples, decoded, threshold)


def drop_duplicates(ds: DataSet, cache: ImageCache | None = None, prep: Preprocessing | None = None,
                    threshold: int = NEAR_THRESHOLD) -> tuple[DataSet, list[dict[str, str]]]:
    """`ds` without duplicate copies, leaked copies and conflicting labels; plus what was dropped and why."""
    report = find_duplicates(ds, cache, prep, threshold)
    drop = report.to_drop()
    gone = {str(report.samples[i].path) for i in drop}
    kept = [s for s in ds.samples if str(s.path) not in gone]
    dropped = [{"path": str(report.samples[i].path), "split": report.samples[i].split, "reason": why}
               for i, why in sorted(drop.items(), key=lambda kv: str(report.samples[kv[0]].path))]
    return DataSet(ds.root, ds.classes, kept, ds.layout, list(ds.skipped), list(ds.ignored)), dropped
