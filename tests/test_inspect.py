"""`pawsight data inspect`: the report a user reads before training, on real and hostile folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pawsight.cli import main


def inspect_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["data", "inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_dev_set_is_clean(full: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's acceptance check: 2 classes, 1000/1000 train, 500/500 validation, nothing wrong."""
    r = inspect_json(capsys, str(full), "--sheet", str(tmp_path / "sheet.png"))
    assert r["classes"] == ["cats", "dogs"]
    assert r["counts"] == {"train": {"cats": 1000, "dogs": 1000}, "validation": {"cats": 500, "dogs": 500}}
    assert r["skipped"] == [] and r["leaks"] == [] and r["duplicates"] == [] and r["conflicts"] == []
    assert r["image_stats"]["formats"] == {"JPEG": 3000}
    assert r["warnings"] == []
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.height > 2 * 96  # one row of thumbnails per class


def test_class_folders_three_classes_imbalance_and_sheet(tmp_path: Path, tiny: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    for name, n in (("cats", 30), ("dogs", 12), ("zebras", 10)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            colour = rng.integers(0, 255, size=3, dtype=np.uint8)
            noise = rng.integers(0, 60, size=(40, 50, 3), dtype=np.uint8)
            Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / "cats" / "notes.txt").write_text("not a picture")
    sheet = tmp_path / "out" / "sheet.png"
    r = inspect_json(capsys, str(root), "--sheet", str(sheet), "--size", "64")
    assert r["layout"] == "class-folders" and r["classes"] == ["cats", "dogs", "zebras"]
    assert r["counts"] == {"train": {"cats": 24, "dogs": 10, "zebras": 8},
                           "validation": {"cats": 6, "dogs": 2, "zebras": 2}}  # 80/20 of readable files
    assert [Path(s["path"]).name for s in r["skipped"]] == ["notes.txt"]
    assert "not an image" in r["skipped"][0]["reason"]
    assert r["image_stats"]["width"] == {"min": 50, "median": 50, "max": 50}
    text = " ".join(r["warnings"])
    assert "class imbalance" in text and "'cats'" in text and "'zebras'" in text
    assert "fewer than 20 training pictures" in text
    assert "split_note" in r and r["contact_sheet"] == str(sheet)
    with Image.open(sheet) as im:
        assert im.size == (150 + 8 * 100 + 4, 3 * 100 + 4)
        # the first thumbnail of the first row holds a cat picture, not the white background
        assert np.asarray(im.convert("RGB"))[10:90, 160:240].std() > 5


def test_leaks_and_human_report(tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "leaky"
    for split in ("train", "validation"):
        for c in ("cats", "dogs"):
            (root / split / c).mkdir(parents=True)
            for f in sorted((tiny / split / c).glob("*.jpg"))[:4]:
                shutil.copy(f, root / split / c / f.name)
    src = sorted((root / "train" / "dogs").glob("*.jpg"))[0]
    shutil.copy(src, root / "validation" / "dogs" / "again.jpg")
    r = inspect_json(capsys, str(root), "--sheet", str(tmp_path / "s.png"))
    leak, = r["leaks"]
    assert leak["kind"] == "exact" and leak["splits"] == ["train", "validation"]
    assert any("--drop-duplicates" in w for w in r["warnings"])

    assert main(["data", "inspect", str(root), "--sheet", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "leaks across splits: 1" in out and "again.jpg" in out
    assert "cats" in out and "total" in out and "warning:" in out


def test_hostile_zoo_skips_bad_files_and_loses_no_good_one(tmp_path: Path) -> None:
    """Every odd-but-valid picture is read, every hostile file skipped with a reason, exit 0, no traceback."""
    from hostile import make_zoo

    root = tmp_path / "zoo"
    valid, hostile = set(), set()
    for c in ("good", "bad"):
        v, h = make_zoo(root / c)
        valid |= {f"{c}/{n}" for n in v}
        hostile |= {f"{c}/{n}" for n in h}
    command = [sys.executable, "-m", "pawsight", "data", "inspect", str(root), "--json",
               "--sheet", str(tmp_path / "zoo.png")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    r = json.loads(result.stdout)
    skipped = {str(Path(s["path"]).relative_to(root)): s["reason"] for s in r["skipped"]}
    assert set(skipped) == hostile
    assert all(reason and "\n" not in reason for reason in skipped.values())
    assert r["images"] == len(valid)
    assert sum(n for split in r["counts"].values() for n in split.values()) == len(valid)
