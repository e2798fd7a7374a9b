"""From a folder of class sub-folders to a labelled, split list of candidate files.

Two layouts are understood:
- `DATA/<class>/...`: split automatically (stratified, seeded, reproducible) into train and validation;
- `DATA/train/<class>`, `DATA/validation|val|valid/<class>`, optional `DATA/test/<class>`.
Class names are the folder names, sorted. Hidden entries (`.DS_Store`, `.ipynb_checkpoints`, `__MACOSX`) never
become classes or samples. This module only lists files; whether a file is a readable picture is decided when
it is decoded (see `cache.py`), so a bad file costs one skip line, never the run.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PawsightError
from .images import IMAGE_SUFFIXES

SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                 "valid": "validation", "test": "test", "testing": "test"}
SPLITS = ("train", "validation", "test")


def is_hidden(name: str) -> bool:
    return name.startswith((".", "_")) or name in {"__MACOSX", "Thumbs.db", "desktop.ini"}


@dataclass
class Sample:
    path: Path
    label: int
    split: str


@dataclass
class Skip:
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class DataSet:
    """Candidate files of a data folder: `classes` (sorted names), `samples` (path, label index, split)."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    layout: str  # "split-folders" or "class-folders"
    skipped: list[Skip] = field(default_factory=list)  # entries refused while listing (loops, fake dirs)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    @property
    def splits(self) -> list[str]:
        present = {s.split for s in self.samples}
        return [s for s in SPLITS if s in present]

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for split in self.splits:
            c = Counter(s.label for s in self.split(split))
            out[split] = {name: c.get(i, 0) for i, name in enumerate(self.classes)}
        return out


def list_files(folder: Path, skipped: list[Skip]) -> list[Path]:
    """All non-hidden files below `folder`, sorted; follows symlinks but never loops."""
    found: list[Path] = []
    seen: set[str] = set()

    def walk(directory: Path) -> None:
        real = os.path.realpath(directory)
        if real in seen:
            skipped.append(Skip(str(directory), "symlink loop (folder already visited)"))
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(Skip(str(directory), f"cannot list folder: {exc.strerror or exc}"))
            return
        for entry in entries:
            if is_hidden(entry.name):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    skipped.append(Skip(str(path), "is a directory, not an image file"))
                else:
                    walk(path)
            else:
                found.append(path)  # dangling symlinks, FIFOs, non-images: judged when decoded

    walk(folder)
    return found


def class_dirs(folder: Path) -> dict[str, Path]:
    out = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not is_hidden(entry.name) and entry.is_dir():
            out[entry.name] = Path(entry.path)
    return out


def scan(root: str | os.PathLike[str], val_fraction: float = 0.2, seed: int = 0) -> DataSet:
    """List the data folder `root`; class-folder layouts are split stratified with `val_fraction`."""
    root = Path(root).expanduser()
    if not root.exists():
        raise PawsightError(f"data folder not found: {root}")
    if not root.is_dir():
        raise PawsightError(f"not a folder: {root} (point pawsight at a folder of class sub-folders)")
    top = class_dirs(root)
    split_dirs = {SPLIT_ALIASES[n.lower()]: p for n, p in top.items() if n.lower() in SPLIT_ALIASES}
    skipped: list[Skip] = []
    if split_dirs:
        per_split = {split: {c: list_files(p, skipped) for c, p in class_dirs(d).items()}
                     for split, d in split_dirs.items()}
        classes = sorted({c for files in per_split.values() for c in files})
        check_classes(root, classes, per_split)
        index = {c: i for i, c in enumerate(classes)}
        samples = [Sample(f, index[c], split) for split in SPLITS if split in per_split
                   for c, files in sorted(per_split[split].items()) for f in files]
        if "train" in per_split and "validation" not in per_split and val_fraction > 0:
            samples = split_samples(samples, val_fraction, seed, from_split="train")
        return DataSet(root, classes, samples, "split-folders", skipped)
    per_class = {c: list_files(p, skipped) for c, p in top.items()}
    classes = sorted(per_class)
    check_classes(root, classes, {"train": per_class})
    samples = [Sample(f, i, "train") for i, c in enumerate(classes) for f in per_class[c]]
    if val_fraction > 0:
        samples = split_samples(samples, val_fraction, seed, from_split="train")
    return DataSet(root, classes, samples, "class-folders", skipped)


def check_classes(root: Path, classes: list[str], per_split: dict[str, dict[str, list[Path]]]) -> None:
    if len(classes) == 0:
        raise PawsightError(
            f"no class folders in {root}: expected {root}/<class>/<images> (e.g. cats/, dogs/) "
            f"or {root}/train/<class>/")
    if len(classes) == 1:
        raise PawsightError(f"only one class ({classes[0]!r}) in {root}: a classifier needs at least two "
                            "class folders")
    empty = [f"{split}/{c}" if len(per_split) > 1 or split != "train" else c
             for split, files in per_split.items() for c, f in files.items() if not f]
    if empty:
        raise PawsightError(f"empty class folder(s) in {root}: {', '.join(empty)}")


def split_samples(samples: list[Sample], fraction: float, seed: int, from_split: str) -> list[Sample]:
    """Move a stratified, seeded `fraction` of `from_split` into validation; same call, same split.

    The order is derived from file names (not listing order), so adding files elsewhere does not reshuffle.
    """
    if not 0 < fraction < 1:
        raise PawsightError(f"validation fraction must be between 0 and 1, got {fraction}")
    out = []
    by_label: dict[int, list[Sample]] = {}
    for s in samples:
        if s.split == from_split:
            by_label.setdefault(s.label, []).append(s)
        else:
            out.append(s)
    rng = np.random.default_rng(seed)
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda s: str(s.path))
        order = rng.permutation(len(group))
        n_val = int(round(len(group) * fraction)) if len(group) > 1 else 0
        n_val = min(max(n_val, 1 if len(group) >= 2 else 0), len(group) - 1)
        val_idx = set(order[:n_val].tolist())
        for i, s in enumerate(group):
            out.append(Sample(s.path, s.label, "validation" if i in val_idx else from_split))
    return sorted(out, key=lambda s: (SPLITS.index(s.split), s.label, str(s.path)))
