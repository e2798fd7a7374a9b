"""scan(): both folder layouts, hidden entries, the seeded stratified split, clear errors for bad folders."""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from pawsight.data import list_files, scan
from pawsight.errors import PawsightError


def _tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 100, 50)).save(buf, "JPEG")
    return buf.getvalue()


TINY_JPEG = _tiny_jpeg()


def fill(folder: Path, n: int, prefix: str = "img") -> None:
    """n tiny pictures (scan only lists files; content does not matter to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{prefix}{i:03d}.jpg").write_bytes(TINY_JPEG)


def class_layout(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        fill(root / name, n)
    return root


def names(samples) -> list[str]:
    return [s.path.name for s in samples]


def test_class_folders_sorted_and_split(tmp_path: Path) -> None:
    root = class_layout(tmp_path / "data", {"dogs": 50, "cats": 40})
    ds = scan(root)
    assert ds.layout == "class-folders"
    assert ds.classes == ["cats", "dogs"]
    assert ds.splits == ["train", "validation"]
    counts = ds.counts()
    assert counts["validation"] == {"cats": 8, "dogs": 10}  # 20% of each class
    assert counts["train"] == {"cats": 32, "dogs": 40}
    for s in ds.samples:  # labels follow the sorted class names
        assert s.path.parent.name == ds.classes[s.label]


def test_split_is_reproducible_and_seeded(tmp_path: Path) -> None:
    root = class_layout(tmp_path / "data", {"a": 30, "b": 30})
    first, again = scan(root, seed=0), scan(root, seed=0)
    assert [(str(s.path), s.split) for s in first.samples] == [(str(s.path), s.split) for s in again.samples]
    other = scan(root, seed=1)
    assert set(names(first.split("validation"))) != set(names(other.split("validation")))


def test_split_fraction(tmp_path: Path) -> None:
    root = class_layout(tmp_path / "data", {"a": 100, "b": 10})
    ds = scan(root, val_fraction=0.3)
    assert ds.counts()["validation"] == {"a": 30, "b": 3}
    assert scan(root, val_fraction=0).splits == ["train"]
    with pytest.raises(PawsightError, match="fraction"):
        scan(root, val_fraction=1.5)


def test_split_does_not_reshuffle_when_another_class_grows(tmp_path: Path) -> None:
    root = class_layout(tmp_path / "data", {"a": 20, "b": 20})
    a_before = {s.path.name for s in scan(root).split("validation") if s.path.parent.name == "a"}
    fill(root / "b", 40, prefix="more")
    a_after = {s.path.name for s in scan(root).split("validation") if s.path.parent.name == "a"}
    assert a_before == a_after and len(a_before) == 4


def test_hidden_entries_ignored(tmp_path: Path) -> None:
    root = class_layout(tmp_path / "data", {"cats": 5, "dogs": 5})
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "cats" / ".DS_Store").write_bytes(b"\0")
    (root / "cats" / "._img000.jpg").write_bytes(b"\0")  # macOS resource fork
    fill(root / ".ipynb_checkpoints", 3)
    fill(root / "__MACOSX" / "cats", 3)
    fill(root / "dogs" / ".ipynb_checkpoints", 2)
    ds = scan(root, val_fraction=0)
    assert ds.classes == ["cats", "dogs"]
    assert len(ds.samples) == 10
    parts = [part for s in ds.samples for part in s.path.relative_to(root).parts]
    assert not any(part.startswith((".", "__")) for part in parts)


def test_nested_sub_folders_belong_to_their_class(tmp_path: Path) -> None:
    root = class_layout(tmp_path / "data", {"cats": 2, "dogs": 2})
    fill(root / "cats" / "kittens", 3)
    ds = scan(root, val_fraction=0)
    assert Counter(ds.classes[s.label] for s in ds.samples) == {"cats": 5, "dogs": 2}


@pytest.mark.parametrize("val_name", ["validation", "val", "valid", "Validation"])
def test_split_folders_with_aliases(tmp_path: Path, val_name: str) -> None:
    root = tmp_path / "data"
    class_layout(root / "train", {"cats": 6, "dogs": 4})
    class_layout(root / val_name, {"cats": 3, "dogs": 2})
    ds = scan(root)
    assert ds.layout == "split-folders"
    assert ds.classes == ["cats", "dogs"]
    assert ds.counts() == {"train": {"cats": 6, "dogs": 4}, "validation": {"cats": 3, "dogs": 2}}


def test_split_folders_with_test_split(tmp_path: Path) -> None:
    root = tmp_path / "data"
    class_layout(root / "train", {"cats": 6, "dogs": 4})
    class_layout(root / "val", {"cats": 3, "dogs": 2})
    class_layout(root / "test", {"cats": 1, "dogs": 1})
    ds = scan(root)
    assert ds.splits == ["train", "validation", "test"]
    assert ds.counts()["test"] == {"cats": 1, "dogs": 1}


def test_train_only_split_folder_gets_a_validation_split(tmp_path: Path) -> None:
    root = tmp_path / "data"
    class_layout(root / "train", {"cats": 10, "dogs": 10})
    ds = scan(root)
    assert ds.counts() == {"train": {"cats": 8, "dogs": 8}, "validation": {"cats": 2, "dogs": 2}}


def test_three_classes(tmp_path: Path) -> None:
    root = class_layout(tmp_path / "data", {"zebra": 10, "ant": 10, "moose": 10})
    ds = scan(root)
    assert ds.classes == ["ant", "moose", "zebra"]
    assert ds.counts()["validation"] == {"ant": 2, "moose": 2, "zebra": 2}


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(PawsightError, match="not found"):
        scan(tmp_path / "nope")


def test_file_instead_of_folder(tmp_path: Path) -> None:
    f = tmp_path / "data.zip"
    f.write_bytes(b"PK")
    with pytest.raises(PawsightError, match="not a folder"):
        scan(f)


def test_no_classes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    fill(root, 5)  # pictures straight in the folder: no class sub-folders
    with pytest.raises(PawsightError, match="no class folders"):
        scan(root)


def test_single_class(tmp_path: Path) -> None:
    root = class_layout(tmp_path / "data", {"cats": 5})
    with pytest.raises(PawsightError, match="only one class.*cats"):
        scan(root)


def test_empty_class(tmp_path: Path) -> None:
    root = class_layout(tmp_path / "data", {"cats": 5, "dogs": 0})  # an empty folder is not a class
    with pytest.raises(PawsightError, match=r"only one class.*cats.*not used: dogs \(no pictures"):
        scan(root)


def test_empty_class_in_split_layout_is_named_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "data"
    class_layout(root / "train", {"cats": 3, "dogs": 3})
    class_layout(root / "val", {"cats": 3, "dogs": 0})
    ds = scan(root)
    assert ds.classes == ["cats", "dogs"] and ds.counts()["validation"] == {"cats": 3, "dogs": 0}
    assert [(Path(s.path).relative_to(root).as_posix(), "no pictures" in s.reason) for s in ds.ignored] == [
        ("val/dogs", True)]


def test_symlink_loop_and_fake_image_folder_are_skipped_not_fatal(tmp_path: Path) -> None:
    root = class_layout(tmp_path / "data", {"cats": 3, "dogs": 3})
    os.symlink(root / "cats", root / "cats" / "again")  # a folder loop
    (root / "dogs" / "weird.jpg").mkdir()
    skipped: list = []
    files = list_files(root / "cats", skipped)
    assert len(files) == 3
    ds = scan(root, val_fraction=0)
    assert len(ds.samples) == 6
    reasons = " ".join(s.reason for s in ds.skipped)
    assert "directory" in reasons
    # the loop leads back inside the data folder: not followed, listed as not used (issue 14.8)
    assert any(s.path.endswith("again") and "inside the data folder" in s.reason for s in ds.ignored)


def test_real_tiny_set(tiny: Path) -> None:
    ds = scan(tiny)
    assert ds.classes == ["cats", "dogs"]
    assert ds.layout == "split-folders"
    counts = ds.counts()
    assert sum(counts["train"].values()) == 80 and sum(counts["validation"].values()) == 40
    assert counts["train"]["cats"] == counts["train"]["dogs"]
    assert counts["validation"]["cats"] == counts["validation"]["dogs"]
