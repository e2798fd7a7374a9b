"""Nothing lost, round 2 (issue 14): every command that writes, pointed at a folder of the user's files,
leaves every user byte where it was; outputs never land inside a data folder; compare never replaces good
results with failures; links inside a data folder are not followed; exit statuses do not depend on the output
format; files honour the umask."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import pawsight
from clitools import one_error_line
from clitools import pawsight as cli
from pawsight.cli import build_parser
from pawsight.errors import PawsightError

FAST = {"approach": "classical", "features": "hog", "model": "logreg"}


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry below `folder` (links as their target text, folders as 'dir', files by SHA-256)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def user_files(folder: Path, tiny: Path, *names: str) -> Path:
    """A folder of the user's own things: a document, a photo, a sub-folder, a link, and a file under each
    name in `names` (an output's name), none of them written by pawsight."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("the user's notes")
    shutil.copy(next((tiny / "train" / "cats").glob("*.jpg")), folder / "photo.jpg")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "inner.txt").write_text("more of the user's work")
    (folder / "link.txt").symlink_to("notes.txt")
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"the user's own " + name.encode())
    return folder


def kept(before: dict[str, str], folder: Path) -> bool:
    """Every entry of `before` is still there, unchanged (new files of pawsight's beside them are allowed)."""
    after = snapshot(folder)
    return {k: after.get(k) for k in before} == before


@pytest.fixture(scope="module")
def runs(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nothing-lost")
    classical, transfer = root / "classical", root / "transfer"
    pawsight.train(tiny, out=classical, **FAST)
    pawsight.train(tiny, out=transfer, size=64)
    pawsight.evaluate(classical, tiny)
    return {"classical": classical, "transfer": transfer}


@pytest.fixture
def data(tiny: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(tiny, copy)
    return copy


# -- the sweep: every command that writes ------------------------------------------------------------------
# Each case: (command, how to set it up) -> (argv, cwd, env, the user folder to watch, exit statuses allowed).
# A refused case must be ONE error line (exit 2); an allowed one (exit 0) must have written beside the user's
# files, not over them.
Case = Callable[[Path, Path, dict[str, Path]], tuple[list[str], Path | None, dict[str, str], Path]]


def _inspect_sheet_exists(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny, "sheet.png")
    return ["data", "inspect", str(tiny), "--size", "32", "--sheet", str(u / "sheet.png")], None, {}, u


def _inspect_sheet_in_data(t: Path, tiny: Path, runs: dict[str, Path]):
    d = t / "data"
    shutil.copytree(tiny, d)
    user_files(d / "train" / "cats", tiny)
    sheet = d / "train" / "cats" / "s.png"
    return ["data", "inspect", str(d), "--size", "32", "--sheet", str(sheet)], None, {}, d


def _inspect_default_sheet_in_cwd(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny, f"{tiny.name}-contact-sheet.png")
    return ["data", "inspect", str(tiny), "--size", "32"], u, {}, u


def _inspect_from_inside_a_class(t: Path, tiny: Path, runs: dict[str, Path]):
    d = t / "data"
    shutil.copytree(tiny, d)
    return ["data", "inspect", str(d), "--size", "32"], d / "train" / "cats", {}, d


def _download_over_user_folder(t: Path, tiny: Path, runs: dict[str, Path]):
    from pawsight.download import DATASETS

    u = user_files(t / "u", tiny, f"{DATASETS['cats-vs-dogs'].name}/mine.txt")
    return ["data", "download", "cats-vs-dogs", "--dir", str(u)], None, {}, u


def _train_into_user_folder(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny, "run.json")
    return ["train", str(tiny), "--approach", "classical", "--features", "hog", "--model", "logreg", "--out",
            str(u), "--overwrite"], None, {}, u


def _train_inside_data(t: Path, tiny: Path, runs: dict[str, Path]):
    d = t / "data"
    shutil.copytree(tiny, d)
    return ["train", str(d), "--approach", "classical", "--out", str(d / "train" / "runs")], None, {}, d


def _run_copy(t: Path, runs: dict[str, Path], kind: str, *names: str, tiny: Path) -> Path:
    run = t / "run"
    shutil.copytree(runs[kind], run, symlinks=True)
    for name in names:
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_bytes(b"the user's own " + name.encode())
    return run


def _evaluate_beside_user_evaluation(t: Path, tiny: Path, runs: dict[str, Path]):
    run = _run_copy(t, runs, "classical", "evaluations/my-notes.json", tiny=tiny)
    return ["evaluate", str(run), str(tiny)], None, {}, run


def _plot_over_user_png(t: Path, tiny: Path, runs: dict[str, Path]):
    run = _run_copy(t, runs, "classical", "plots/confusion-matrix.png", "plots/mine.html", tiny=tiny)
    return ["plot", str(run)], None, {}, run


def _report_over_user_page(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny, "report.html")
    return ["report", str(runs["classical"]), "--out", str(u / "report.html"), "--top-k", "0"], None, {}, u


def _report_beside_user_files(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny)
    return ["report", str(runs["classical"]), "--out", str(u / "new.html"), "--top-k", "0"], None, {}, u


def _explain_over_user_photo(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny)
    return ["explain", str(runs["classical"]), str(u / "photo.jpg"), "--out", str(u / "photo.jpg")], None, \
        {}, u


def _explain_default_name_in_cwd(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny, "photo.jpg.classical.occlusion.png")
    return ["explain", str(runs["classical"]), "photo.jpg", "--method", "occlusion"], u, {}, u


def _export_over_user_file(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny, "model.onnx")
    return ["export", str(runs["transfer"]), "--out", str(u / "model.onnx")], None, {}, u


def _export_into_another_run(t: Path, tiny: Path, runs: dict[str, Path]):
    other = _run_copy(t, runs, "transfer", tiny=tiny)
    return ["export", str(runs["transfer"]), "--out", str(other / "model.onnx")], None, {}, other


def _compare_into_user_folder(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny, "compare.csv")
    return ["compare", str(tiny), "--out", str(u), "--overwrite", "--approaches", "classical", "--sizes",
            "5"], None, {}, u


def _compare_inside_data(t: Path, tiny: Path, runs: dict[str, Path]):
    d = t / "data"
    shutil.copytree(tiny, d)
    return ["compare", str(d), "--out", str(d / "results"), "--approaches", "classical", "--sizes", "5"], \
        None, {}, d


def _predict_out_into_user_folder(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny, "predictions.jsonl")
    return ["predict", str(runs["classical"]), str(tiny / "validation"), "--out", str(u)], None, {}, u


def _predict_out_inside_the_data(t: Path, tiny: Path, runs: dict[str, Path]):
    d = t / "data"
    shutil.copytree(tiny, d)
    return ["predict", str(runs["classical"]), str(d), "--out", str(d / "answers"), "--format", "csv"], \
        None, {}, d


def _cache_clear_user_folder(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny, "features/mine.npy", "pixels/raw.bin", "meta.json", "weights/w.pth")
    return ["cache", "clear", "--all"], None, {"PAWSIGHT_CACHE": str(u)}, u


def _issues_csv_over_user_file(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny, "issues.csv")
    return ["data", "issues", str(tiny), "--csv", str(u / "issues.csv"), "--html", str(u / "g.html")], None, \
        {}, u


def _issues_html_inside_data(t: Path, tiny: Path, runs: dict[str, Path]):
    d = t / "data"
    shutil.copytree(tiny, d)
    return ["data", "issues", str(d), "--csv", str(t / "i.csv"), "--html", str(d / "train" / "g.html")], \
        None, {}, d


def _issues_default_names_over_user_files(t: Path, tiny: Path, runs: dict[str, Path]):
    u = user_files(t / "u", tiny, f"{tiny.name}-issues.csv", f"{tiny.name}-issues.html")
    return ["data", "issues", str(tiny)], u, {}, u


CASES: dict[str, tuple[str, Case, set[int]]] = {
    "inspect --sheet over a user file": ("data inspect", _inspect_sheet_exists, {2}),
    "inspect --sheet inside the data": ("data inspect", _inspect_sheet_in_data, {2}),
    "inspect default sheet over a user file": ("data inspect", _inspect_default_sheet_in_cwd, {0}),
    "inspect run from inside a class folder": ("data inspect", _inspect_from_inside_a_class, {0}),
    "download over a user folder": ("data download", _download_over_user_folder, {2}),
    "train --overwrite into a user folder": ("train", _train_into_user_folder, {2}),
    "train --out inside the data": ("train", _train_inside_data, {2}),
    "evaluate beside a user evaluation": ("evaluate", _evaluate_beside_user_evaluation, {0}),
    "plot over a user png": ("plot", _plot_over_user_png, {2}),
    "report --out over a user page": ("report", _report_over_user_page, {2}),
    "report --out beside user files": ("report", _report_beside_user_files, {0}),
    "explain --out over a user photo": ("explain", _explain_over_user_photo, {2}),
    "explain default name over a user file": ("explain", _explain_default_name_in_cwd, {2}),
    "export --out over a user file": ("export", _export_over_user_file, {2}),
    "export --out into another run": ("export", _export_into_another_run, {2}),
    "compare --overwrite into a user folder": ("compare", _compare_into_user_folder, {2}),
    "compare --out inside the data": ("compare", _compare_inside_data, {2}),
    "issues --csv over a user file": ("data issues", _issues_csv_over_user_file, {2}),
    "issues --html inside the data": ("data issues", _issues_html_inside_data, {2}),
    "issues default names over user files": ("data issues", _issues_default_names_over_user_files, {0}),
    "cache clear --all of a user folder": ("cache clear", _cache_clear_user_folder, {2}),
    "predict --out into a user folder": ("predict", _predict_out_into_user_folder, {2}),
    "predict --out inside the data": ("predict", _predict_out_inside_the_data, {2}),
}
# Commands that write nothing but the cache (and, for serve, nothing at all).
READ_ONLY = {"serve", "advise", "cache info"}


def leaf_commands() -> set[str]:
    import argparse

    def walk(parser: argparse.ArgumentParser, prefix: str) -> set[str]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return {prefix.strip()}
        return {name for a in subs for cmd, p in a.choices.items() for name in walk(p, f"{prefix} {cmd}")}

    return walk(build_parser(), "")


def test_every_command_that_writes_is_in_the_sweep() -> None:
    """A new command must be put in the sweep below (or declared read-only): the rule covers all of them."""
    assert {command for command, _, _ in CASES.values()} | READ_ONLY == leaf_commands()


@pytest.mark.parametrize("case", list(CASES))
def test_every_user_byte_survives(case: str, tiny: Path, runs: dict[str, Path], tmp_path: Path) -> None:
    _, setup, allowed = CASES[case]
    argv, cwd, env, watched = setup(tmp_path, tiny, runs)
    before = snapshot(watched)
    result = cli(*argv, cwd=cwd, env=env)
    assert result.returncode in allowed, result.stderr[-2000:]
    if result.returncode == 2:
        one_error_line(result)
    assert kept(before, watched), f"{case}: user files changed"
    if watched.name == "data":  # nothing new inside a data folder either
        assert set(snapshot(watched)) == set(before), f"{case}: wrote into the data folder"


# -- compare: options checked first, good results never replaced by failures --------------------------------

def test_compare_keeps_earlier_results_when_every_point_fails(tiny: Path, tmp_path: Path) -> None:
    from pawsight.choose import compare

    out = tmp_path / "cmp"
    first = compare(tiny, ["classical"], [None], out=out, time_budget=600,
                    params={"classical": {"features": "hog", "model": "logreg"}})
    assert first["rows"][0]["accuracy"] is not None and first["failed"] == 0
    before = snapshot(out)
    with pytest.raises(PawsightError, match="nothing was compared.*results already in it are kept"):
        compare(tiny, ["classical"], [None], out=out, overwrite=True, time_budget=600,
                params={"classical": {"features": "hog", "model": "no-such-model"}})
    assert snapshot(out) == before  # compare.csv still holds the earlier result, its run still loads
    assert pawsight.load(out / "runs" / "classical-all").classes_ == ["cats", "dogs"]


@pytest.mark.parametrize("bad", [["--seed", "-1"], ["--time-budget", "0"]])
def test_compare_refuses_bad_options_before_any_work(tiny: Path, tmp_path: Path, bad: list[str]) -> None:
    out = tmp_path / "cmp"
    one_error_line(cli("compare", tiny, "--out", out, "--approaches", "classical", *bad))
    assert not out.exists()


# -- silent wrongness --------------------------------------------------------------------------------------

def test_a_link_back_into_the_data_folder_is_not_followed(data: Path, tmp_path: Path) -> None:
    """Issue 14.8: dogs/loopdir -> DATA filed every cat under dogs too (121 dogs instead of 40)."""
    from pawsight.data import scan

    honest = scan(data).counts()
    (data / "train" / "dogs" / "loopdir").symlink_to(data, target_is_directory=True)
    (data / "train" / "kittens").symlink_to(data / "train" / "cats", target_is_directory=True)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(data / "train" / "cats", elsewhere)
    (data / "train" / "cats" / "more").symlink_to(elsewhere, target_is_directory=True)
    ds = scan(data)
    counts = ds.counts()
    assert counts["train"]["dogs"] == honest["train"]["dogs"]
    assert "kittens" not in ds.classes
    assert counts["train"]["cats"] == 2 * honest["train"]["cats"]  # a link leading outside is followed
    reasons = {Path(s.path).name: s.reason for s in ds.ignored}
    assert "inside the data folder" in reasons["loopdir"] and "inside the data folder" in reasons["kittens"]


def test_exit_status_does_not_depend_on_the_output_format(runs: dict[str, Path], data: Path) -> None:
    """Issue 14.11: `evaluate --json` exited 0 when pictures were skipped (text mode: 1)."""
    (data / "validation" / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    text = cli("evaluate", runs["classical"], data, "--no-save")
    as_json = cli("evaluate", runs["classical"], data, "--no-save", "--json")
    assert text.returncode == as_json.returncode == 1, (text.stderr, as_json.stderr)


def test_files_honour_the_umask_and_keep_their_mode(tmp_path: Path) -> None:
    """Issue 14.12: mkstemp made every file 0600 (a report could not be published, a run not served by
    another user), and rewriting a 0644 file made it 0600."""
    from pawsight.storage import atomic_write_bytes

    new, old = tmp_path / "new.html", tmp_path / "old.html"
    old.write_text("x")
    old.chmod(0o640)
    atomic_write_bytes(new, b"page")
    atomic_write_bytes(old, b"page")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(old.stat().st_mode) == 0o640


def test_predict_csv_escapes_control_characters_and_an_empty_glob_says_so(runs: dict[str, Path],
                                                                          tiny: Path, tmp_path: Path) -> None:
    """Issue 14.13: ESC bytes of a file name reached the terminal through --format csv; an empty glob said
    "none of the 1 file(s)"."""
    evil = tmp_path / "cat\x1b[31mred.jpg"
    shutil.copy(next((tiny / "train" / "cats").glob("*.jpg")), evil)
    result = cli("predict", runs["classical"], evil, "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\\x1b" in result.stdout
    line = one_error_line(cli("predict", runs["classical"], str(tmp_path / "nothing-here-*.jpg")))
    assert "no file matches" in line and "none of the" not in line


def test_a_class_with_one_validation_picture_is_warned_about(tiny: Path, tmp_path: Path) -> None:
    """Issue 14.13: one picture reported "validation accuracy 100%" without a word."""
    data = tmp_path / "data"
    shutil.copytree(tiny / "train", data / "train")
    (data / "validation" / "cats").mkdir(parents=True)
    shutil.copytree(tiny / "validation" / "dogs", data / "validation" / "dogs")
    shutil.copy(next((tiny / "validation" / "cats").glob("*.jpg")), data / "validation" / "cats")
    result = cli("train", data, "--approach", "classical", "--features", "hog", "--model", "logreg",
                 "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "class 'cats' has only 1 validation picture(s)" in result.stderr


def test_report_and_explain_refuse_a_foreign_file_before_any_work(runs: dict[str, Path], tiny: Path,
                                                                  tmp_path: Path, monkeypatch) -> None:
    """Issue 14.13: the refusal came after 12-15 s of work."""
    import pawsight.report.explain as explain_module
    import pawsight.report.plots as plots
    from pawsight.cli import main
    from pawsight.report.html import build_report

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(plots, "load_evaluation", no_work)
    monkeypatch.setattr(explain_module, "explain", no_work)
    mine = tmp_path / "mine.html"
    mine.write_text("my page")
    with pytest.raises(PawsightError, match="not written by pawsight"):
        build_report(runs["classical"], out=mine)
    assert main(["explain", str(runs["classical"]), str(tiny / "train" / "cats" / "cat.1000.jpg"), "--out",
                 str(mine)]) == 2
    assert mine.read_text() == "my page"
