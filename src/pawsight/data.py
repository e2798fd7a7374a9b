"""From a data folder to a labelled, split list of candidate files, by one rule (README "Data folders").

Reading DATA, top level first:
1. Hidden entries (names starting with `.`) and operating-system clutter (`__MACOSX`, `Thumbs.db`,
   `desktop.ini`, `@eaDir`, `$RECYCLE.BIN`, ...) are skipped silently everywhere. A leading `_` is not hidden:
   cameras write `_DSC1234.JPG`.
2. A folder holding a `run.json` (a pawsight run directory, e.g. an `--out` put inside DATA) is never data.
3. A folder named `train`/`training`, `validation`/`val`/`valid` or `test`/`testing` is a *split folder* when
   it holds at least one sub-folder with pictures (its classes); otherwise it is an ordinary class folder
   that happens to have that name (a class called `test`).
4. Any other folder is a *class folder* when a picture (recognised from its first bytes) is anywhere below
   it; a folder without pictures is not a class.
5. With a `train/` split folder the layout is `split-folders`: classes come from the split folders, and
   class folders beside them are not used. Without one it is `class-folders`: the class folders are the
   training pictures, split stratified (seeded, reproducible) into train and validation unless a
   `validation/` split folder is given; a `test/` split folder is kept as the test split.
Everything not used (rules 2-5, loose files outside class folders) is listed in `DataSet.ignored` with the
reason, for the commands to warn about. This module only lists files; whether a listed file is a readable
picture is decided when it is decoded (see `cache.py`), so a bad file costs one skip line, never the run.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PawsightError, shown
from .images import HEADER_BYTES, IMAGE_SUFFIXES, sniff

SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                 "valid": "validation", "test": "test", "testing": "test"}
SPLITS = ("train", "validation", "test")
# What operating systems, file managers and NAS boxes create: never data, never warned about.
OS_CLUTTER = {"__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini", "@eadir", "$recycle.bin",
              "system volume information", "lost+found", "icon\r"}
RUN_MARKER = "run.json"  # what makes a folder a pawsight run directory (see run.py)


def is_hidden(name: str) -> bool:
    """Dot-files and OS clutter; a leading underscore is an ordinary name (camera files: `_DSC1234.JPG`)."""
    return name.startswith(".") or name.lower() in OS_CLUTTER


def is_run_dir(path: Path) -> bool:
    return (path / RUN_MARKER).is_file()


@dataclass(slots=True)  # no __dict__ per picture: a collection holds one of these for each
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
    ignored: list[Skip] = field(default_factory=list)  # folders and files deliberately not used, and why

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    @property
    def splits(self) -> list[str]:
        present = {s.split for s in self.samples}
        return [s for s in SPLITS if s in present]

    def counts(self) -> dict[str, dict[str, int]]:
        """split -> class -> number of *listed* files (see counts_of for what was read)."""
        out: dict[str, dict[str, int]] = {}
        for split in self.splits:
            c = Counter(s.label for s in self.split(split))
            out[split] = {name: c.get(i, 0) for i, name in enumerate(self.classes)}
        return out


def counts_of(classes: list[str], labels: np.ndarray | list[int]) -> dict[str, int]:
    """class -> number of pictures among `labels` (e.g. the decoded ones: counts of what was read)."""
    c = Counter(int(x) for x in np.asarray(labels).tolist())
    return {name: c.get(i, 0) for i, name in enumerate(classes)}


INSIDE_LINK = ("a symbolic link to a folder inside the data folder: not followed (its pictures would be "
               "read twice, under another class)")


def links_inside(path: Path, root: str | None) -> bool:
    """Is `path` a symbolic link to a folder at or below the data folder `root` (a real path)? Such a link is
    never followed: `dogs/loop -> DATA` would file every cat under dogs too. Links leading outside the data
    folder (pictures kept elsewhere) are followed."""
    if root is None or not path.is_symlink():
        return False
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def list_files(folder: Path, skipped: list[Skip], ignored: list[Skip] | None = None,
               root: Path | None = None) -> list[Path]:
    """All non-hidden files below `folder`, sorted; follows symlinks but never loops, and never into the
    data folder `root` again (links_inside); run directories inside it are left out (noted in `ignored`)."""
    found: list[Path] = []
    seen: set[str] = set()
    real_root = os.path.realpath(root) if root is not None else None

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
                if links_inside(path, real_root):
                    if ignored is not None:
                        ignored.append(Skip(str(path), INSIDE_LINK))
                elif path.suffix.lower() in IMAGE_SUFFIXES:
                    skipped.append(Skip(str(path), "is a directory, not an image file"))
                elif is_run_dir(path):
                    if ignored is not None:
                        ignored.append(Skip(str(path), "a pawsight run directory, not pictures"))
                else:
                    walk(path)
            else:
                found.append(path)  # dangling symlinks, FIFOs, non-images: judged when decoded

    walk(folder)
    return found


def looks_like_picture(path: Path) -> bool:
    """Do the first bytes of `path` announce a picture? (Cheap: reads a few bytes; never blocks on a FIFO.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return sniff(os.read(fd, HEADER_BYTES)) is not None
    except OSError:
        return False
    finally:
        os.close(fd)


def sub_dirs(folder: Path) -> dict[str, Path]:
    """Non-hidden sub-folders of `folder` by name (unreadable folder: none)."""
    out = {}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        try:
            if not is_hidden(entry.name) and entry.is_dir():
                out[entry.name] = Path(entry.path)
        except OSError:
            continue
    return out


def loose_files(folder: Path) -> list[Path]:
    """Non-hidden files directly in `folder` (not in any sub-folder)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries if not is_hidden(e.name) and not e.is_dir()]


def read_classes(folder: Path, dirs: dict[str, Path], where: str, skipped: list[Skip], ignored: list[Skip],
                 root: Path) -> dict[str, list[Path]]:
    """class -> files for each of `dirs` (sub-folders of `folder`) holding a picture (rules 2 and 4); the
    others, and files lying loose in `folder`, are noted in `ignored`."""
    out: dict[str, list[Path]] = {}
    for name, path in dirs.items():
        if is_run_dir(path):
            ignored.append(Skip(str(path), "a pawsight run directory (holds run.json), not a class"))
            continue
        if links_inside(path, os.path.realpath(root)):
            ignored.append(Skip(str(path), INSIDE_LINK))
            continue
        listed: list[Skip] = []
        files = list_files(path, listed, ignored, root=root)
        if not any(looks_like_picture(f) for f in files):
            ignored.append(Skip(str(path), f"no pictures in it, so not a class{where}"))
            continue
        skipped.extend(listed)
        out[name] = files
    for f in loose_files(folder):
        ignored.append(Skip(str(f), f"not inside a class folder{where}"))
    return out


def is_split_dir(path: Path) -> bool:
    """Rule 3: a folder named like a split is one only when a sub-folder of it holds pictures."""
    return (path.name.lower() in SPLIT_ALIASES and not is_run_dir(path)
            and any(not is_run_dir(d) and any(looks_like_picture(f) for f in list_files(d, []))
                    for d in sub_dirs(path).values()))


def scan(root: str | os.PathLike[str], val_fraction: float = 0.2, seed: int = 0) -> DataSet:
    """List the data folder `root` by the rule in the module docstring; class folders are split into train
    and validation, stratified, with `val_fraction`."""
    root = Path(root).expanduser()
    if not root.exists():
        raise PawsightError(f"data folder not found: {shown(root)}")
    if not root.is_dir():
        raise PawsightError(f"not a folder: {shown(root)} (point pawsight at a folder of class sub-folders)")
    if not 0 <= val_fraction < 1:
        raise PawsightError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    skipped: list[Skip] = []
    ignored: list[Skip] = []
    split_dirs: dict[str, Path] = {}
    plain: dict[str, Path] = {}
    for name, path in sub_dirs(root).items():
        if is_split_dir(path):
            split = SPLIT_ALIASES[name.lower()]
            if split in split_dirs:
                raise PawsightError(f"both {shown(split_dirs[split].name)}/ and {shown(name)}/ in "
                                    f"{shown(root)} name the {split} split; merge them or rename one")
            split_dirs[split] = path
        else:
            plain[name] = path
    per_split: dict[str, dict[str, list[Path]]] = {}
    if "train" in split_dirs:  # rule 5: split folders only
        layout = "split-folders"
        names = ", ".join(f"{d.name}/" for d in split_dirs.values())
        for path in plain.values():
            ignored.append(Skip(str(path), "a pawsight run directory (holds run.json), not a class"
                                if is_run_dir(path) else
                                f"not used: beside the split folders {names} only those are read; move it "
                                "into train/ (and validation/) to make it a class"))
        for f in loose_files(root):
            ignored.append(Skip(str(f), "not inside a split folder"))
    else:  # rule 5: class folders are the training pictures; validation/ and test/ folders kept as given
        layout = "class-folders"
        classes_here = read_classes(root, plain, "", skipped, ignored, root)
        if classes_here:
            per_split["train"] = classes_here
        elif split_dirs:
            layout = "split-folders"  # e.g. only test/<class>/: a folder to evaluate on
    for split in SPLITS:
        if split in split_dirs:
            folder = split_dirs[split]
            per_split[split] = read_classes(folder, sub_dirs(folder), f" of {folder.name}/", skipped, ignored,
                                            root)
    classes = sorted({c for files in per_split.values() for c in files})
    check_classes(root, classes, ignored)
    index = {c: i for i, c in enumerate(classes)}
    samples = [Sample(f, index[c], split) for split in SPLITS if split in per_split
               for c, files in sorted(per_split[split].items()) for f in files]
    if "train" in per_split and "validation" not in per_split and val_fraction > 0:
        samples = split_samples(samples, val_fraction, seed, from_split="train")
    return DataSet(root, classes, samples, layout, skipped, ignored)


def check_classes(root: Path, classes: list[str], ignored: list[Skip]) -> None:
    unused = "".join(f"; not used: {shown(Path(s.path).name)} ({s.reason})" for s in ignored[:3])
    if len(classes) == 0:
        raise PawsightError(
            f"no class folders in {shown(root)}: expected {shown(root)}/<class>/<images> (e.g. cats/, dogs/) "
            f"or {shown(root)}/train/<class>/{unused}")
    if len(classes) == 1:
        raise PawsightError(f"only one class ({shown(classes[0])!r}) in {shown(root)}: a classifier needs at "
                            f"least two class folders with pictures{unused}")


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


def per_class_subset(samples: list[Sample], n: int, seed: int = 0, split: str = "train") -> list[Sample]:
    """At most `n` pictures per class of `split` (other splits untouched): seeded and nested, i.e. the subset
    for a smaller `n` is part of the subset for a larger one, so a learning curve adds pictures, never swaps
    them. The order comes from file names, like `split_samples`."""
    if n < 1:
        raise PawsightError(f"pictures per class must be at least 1, got {n}")
    by_label: dict[int, list[Sample]] = {}
    for s in samples:
        if s.split == split:
            by_label.setdefault(s.label, []).append(s)
    keep: set[int] = set()
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda s: str(s.path))
        order = np.random.default_rng([seed, label]).permutation(len(group))
        keep.update(id(group[i]) for i in order[:n])
    return [s for s in samples if s.split != split or id(s) in keep]
