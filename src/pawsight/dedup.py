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
_CHUNK = 2048  # rows of the pairwise distance matrix computed at once (bounded memory for 25k images)


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
    """All pairs (i < j) whose hashes differ in at most `threshold` bits; vectorised, in row chunks."""
    h = np.asarray(phashes, dtype=np.uint64)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(h), _CHUNK):
        block = h[start:start + _CHUNK]
        dist = np.bitwise_count(block[:, None] ^ h[None, :])
        rows, cols = np.nonzero(dist <= threshold)
        keep = cols > rows + start
        pairs.extend(zip((rows[keep] + start).tolist(), cols[keep].tolist(), strict=True))
    return pairs


def find_groups(content_hashes: Sequence[str], phashes: Sequence[int | None],
                threshold: int = NEAR_THRESHOLD) -> list[DuplicateGroup]:
    """Groups (size >= 2) of copies among pictures given by content hash and pHash (None: unknown)."""
    n = len(content_hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    first: dict[str, int] = {}
    for i, h in enumerate(content_hashes):
        union(i, first.setdefault(h, i))
    known = [i for i, p in enumerate(phashes) if p is not None]
    if threshold >= 0 and len(known) > 1:
        for a, b in near_pairs([phashes[i] for i in known], threshold):  # type: ignore[misc]
            union(known[a], known[b])

    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    groups = []
    for idx in members.values():
        if len(idx) < 2:
            continue
        exact = len({content_hashes[i] for i in idx}) == 1
        ph = [phashes[i] for i in idx if phashes[i] is not None]
        distance = 0 if exact else max((bin(a ^ b).count("1") for a in ph for b in ph), default=0)
        groups.append(DuplicateGroup(idx, "exact" if exact else "near", distance))
    return groups


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
            keep = min(g.members, key=lambda i: (SPLITS.index(self.samples[i].split),
                                                 str(self.samples[i].path)))
            for i in g.members:
                if i != keep:
                    s = self.samples[i]
                    what = "leak" if s.split != self.samples[keep].split else "duplicate"
                    drop[i] = f"{g.kind} {what} of {self.samples[keep].path} ({self.samples[keep].split})"
        return drop


def report_from_decoded(ds: DataSet, samples: Sequence[Sample], decoded: Decoded,
                        threshold: int = NEAR_THRESHOLD) -> DuplicateReport:
    """Duplicate report for `samples` whose pictures the cache returned as `decoded` (bad files excluded)."""
    by_path = {str(s.path): s for s in samples}
    kept = [by_path[str(p)] for p in decoded.paths]
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
