"""The data-folder rule (README "Data folders", data.py docstring): which folders are classes, which are
splits, what is not used and why, and counts of what was actually read (issue 7, section 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pawsight import cli
from pawsight.data import scan
from pawsight.errors import PawsightError


@pytest.fixture(scope="module")
def photos(tiny: Path) -> dict[str, list[Path]]:
    return {c: sorted((tiny / "train" / c).iterdir()) for c in ("cats", "dogs")}


def put(folder: Path, files: list[Path], names: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        shutil.copyfile(f, folder / (names[i] if names else f.name))
    return folder


def class_data(root: Path, photos: dict[str, list[Path]], n: int = 5) -> Path:
    for c, files in photos.items():
        put(root / c, files[:n])
    return root


def rel(ds, skips) -> dict[str, str]:
    return {Path(s.path).relative_to(ds.root).as_posix(): s.reason for s in skips}


def fake_run_dir(folder: Path, png: Path) -> Path:
    """What `train --out` leaves: run.json, model files, and (report) a plot that *is* a picture."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"format": 1, "approach": "classical", "status": "done"}))
    (folder / "model.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    shutil.copyfile(png, folder / "confusion.jpg")
    return folder


def test_run_directory_inside_the_data_folder_is_never_a_class(tmp_path: Path, photos) -> None:
    root = class_data(tmp_path / "data", photos)
    fake_run_dir(root / "my-run", photos["cats"][-1])
    fake_run_dir(root / "runs" / "classical-1", photos["cats"][-1])  # default runs/<name>, run in DATA
    fake_run_dir(root / "cats" / "oops-run", photos["dogs"][-1])  # --out inside a class folder
    ds = scan(root, val_fraction=0)
    assert ds.classes == ["cats", "dogs"]
    assert len(ds.samples) == 10 and not any("run" in s.path.parent.name for s in ds.samples)
    ignored = rel(ds, ds.ignored)
    assert "run directory" in ignored["my-run"] and "run directory" in ignored["cats/oops-run"]
    assert "no pictures" in ignored["runs"]


def test_folder_without_pictures_is_not_a_class_and_is_named(tmp_path: Path, photos) -> None:
    root = class_data(tmp_path / "data", photos)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("label more cats")
    (root / "empty").mkdir()
    ds = scan(root)
    assert ds.classes == ["cats", "dogs"]
    ignored = rel(ds, ds.ignored)
    assert set(ignored) == {"notes", "empty"} and all("no pictures" in r for r in ignored.values())


def test_class_folder_beside_split_folders_is_reported_not_dropped_silently(tmp_path: Path, photos) -> None:
    root = tmp_path / "data"
    for split in ("train", "validation", "test"):
        class_data(root / split, photos, n=2)
    put(root / "birds", photos["cats"][:3])
    (root / "README.txt").write_text("my data")
    ds = scan(root)
    assert ds.layout == "split-folders" and ds.classes == ["cats", "dogs"]
    ignored = rel(ds, ds.ignored)
    assert set(ignored) == {"birds", "README.txt"}
    assert "train/" in ignored["birds"] and "move it" in ignored["birds"]


def test_class_folders_plus_test_folder(tmp_path: Path, photos) -> None:
    root = class_data(tmp_path / "data", photos, n=10)
    class_data(root / "test", {c: f[10:13] for c, f in photos.items()})
    ds = scan(root, val_fraction=0.2)
    assert ds.layout == "class-folders" and ds.classes == ["cats", "dogs"]
    assert ds.counts() == {"train": {"cats": 8, "dogs": 8}, "validation": {"cats": 2, "dogs": 2},
                           "test": {"cats": 3, "dogs": 3}}
    assert all(s.path.parent.parent.name == "test" for s in ds.split("test"))
    assert not any("test" in s.path.parts for s in ds.split("train") + ds.split("validation"))
    assert ds.ignored == []


def test_class_folders_plus_validation_folder_are_not_split_again(tmp_path: Path, photos) -> None:
    root = class_data(tmp_path / "data", photos, n=6)
    class_data(root / "val", {c: f[6:8] for c, f in photos.items()})
    ds = scan(root)
    assert ds.counts() == {"train": {"cats": 6, "dogs": 6}, "validation": {"cats": 2, "dogs": 2}}


@pytest.mark.parametrize("name", ["test", "Test", "train", "val", "other"])
def test_class_named_like_a_split_is_a_class_when_it_holds_pictures(tmp_path: Path, photos, name) -> None:
    root = class_data(tmp_path / "data", photos)
    put(root / name, photos["cats"][5:9])
    ds = scan(root, val_fraction=0)
    assert ds.layout == "class-folders"
    assert ds.classes == sorted(["cats", "dogs", name])
    assert ds.counts()["train"][name] == 4 and ds.ignored == []


def test_split_named_folder_with_class_sub_folders_is_a_split(tmp_path: Path, photos) -> None:
    root = tmp_path / "data"
    class_data(root / "train", photos, n=4)
    class_data(root / "test", {"cats": photos["cats"][4:6], "other": photos["dogs"][4:6]})
    ds = scan(root)
    assert ds.layout == "split-folders" and ds.classes == ["cats", "dogs", "other"]
    assert ds.counts()["test"] == {"cats": 2, "dogs": 0, "other": 2}


def test_only_a_test_split_is_a_folder_to_evaluate_on(tmp_path: Path, photos) -> None:
    root = tmp_path / "data"
    class_data(root / "test", photos, n=2)
    ds = scan(root)
    assert ds.layout == "split-folders" and ds.splits == ["test"]


def test_two_folders_for_one_split_is_an_error(tmp_path: Path, photos) -> None:
    root = tmp_path / "data"
    class_data(root / "train", photos, n=2)
    class_data(root / "val", photos, n=2)
    class_data(root / "validation", photos, n=2)
    with pytest.raises(PawsightError, match="both val/ and validation/"):
        scan(root)


def test_underscore_files_are_pictures_os_clutter_is_hidden(tmp_path: Path, photos) -> None:
    root = class_data(tmp_path / "data", photos, n=3)
    put(root / "cats", photos["cats"][3:5], ["_DSC1234.JPG", "_MG_0001.jpg"])
    put(root / "_camera_roll", photos["dogs"][3:5])  # a class folder may start with _ too
    for junk in ("Thumbs.db", "desktop.ini", ".DS_Store", "ehthumbs.db"):
        (root / "cats" / junk).write_bytes(b"\0" * 10)
    for junk in ("__MACOSX", "@eaDir", "$RECYCLE.BIN", ".ipynb_checkpoints", "System Volume Information"):
        put(root / junk / "cats", photos["cats"][:1])
        put(root / "dogs" / junk, photos["dogs"][:1])
    ds = scan(root, val_fraction=0)
    assert ds.classes == ["_camera_roll", "cats", "dogs"]
    assert sorted(s.path.name for s in ds.samples if s.path.parent.name == "cats") == sorted(
        [p.name for p in photos["cats"][:3]] + ["_DSC1234.JPG", "_MG_0001.jpg"])
    assert ds.counts()["train"] == {"_camera_roll": 2, "cats": 5, "dogs": 3}
    assert ds.ignored == []  # clutter is skipped without a word


def test_train_counts_only_what_was_read(tmp_path: Path, photos, capsys) -> None:
    root = class_data(tmp_path / "data", photos, n=6)
    (root / "cats" / "notes.jpg").write_text("not a picture")
    (root / "cats" / "empty.jpg").write_bytes(b"")
    (root / "dogs" / "broken.jpg").write_bytes(photos["dogs"][0].read_bytes()[:300])
    (root / "stuff").mkdir()
    (root / "stuff" / "a.txt").write_text("x")
    status = cli.main(["train", str(root), "--approach", "classical", "--out", str(tmp_path / "run"),
                       "--val-fraction", "0.25", "--set", "features=color"])
    out, err = capsys.readouterr()
    assert status == 1, err  # done, some inputs skipped (README: Exit statuses)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    counts = info["data"]["counts"]
    total = sum(sum(c.values()) for c in counts.values())
    assert total == 12, counts  # 15 files listed, 3 unreadable
    assert len(info["data"]["skipped"]) == 3
    assert "(train " in out and f"validation {sum(counts['validation'].values())} pictures" in out
    assert "not used: " in err and "stuff" in err and "no pictures" in err


def test_inspect_counts_and_lists_what_is_not_used(tmp_path: Path, photos, capsys) -> None:
    root = class_data(tmp_path / "data", photos, n=4)
    class_data(root / "test", photos, n=2)
    (root / "dogs" / "garbage.jpg").write_text("nope")
    (root / "notes\x1b[31m").mkdir()
    (root / "notes\x1b[31m" / "x.txt").write_text("x")
    status = cli.main(["data", "inspect", str(root), "--json", "--sheet", str(tmp_path / "sheet.png")])
    r = json.loads(capsys.readouterr().out)
    assert status == 0
    assert r["counts"]["test"] == {"cats": 2, "dogs": 2}
    assert sum(r["counts"]["train"].values()) + sum(r["counts"]["validation"].values()) == 8  # not 9
    assert [Path(i["path"]).name for i in r["ignored"]] == ["notes\x1b[31m"]
    cli.main(["data", "inspect", str(root), "--sheet", str(tmp_path / "sheet.png")])
    out = capsys.readouterr().out
    assert "not used: 1 folder" in out and "notes\\x1b[31m" in out and "\x1b" not in out


def test_inspect_report_escapes_names(tmp_path: Path, photos, capsys) -> None:
    root = tmp_path / "data"
    put(root / "cats\x1b]0;pwned\x07", photos["cats"][:3])
    put(root / "dogs", photos["dogs"][:3])
    (root / "dogs" / "x\nerror: forged.jpg").write_text("not a picture")
    assert cli.main(["data", "inspect", str(root), "--sheet", str(tmp_path / "sheet.png")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\nerror: forged" not in out
    assert "cats\\x1b]0;pwned\\x07" in out and "x\\nerror: forged.jpg" in out
