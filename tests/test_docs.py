"""The documentation cannot go stale quietly.

- docs/cli.md has a heading for every command of `pawsight` ("pawsight data inspect", "pawsight cache clear")
  and names every long option of that command inside its section, so a new option fails here until it is
  documented where readers look for it;
- README.md stays a front door (at most 200 lines) and every relative link in it and in docs/*.md points at
  a file that exists;
- every function the Python API page documents (and everything in the API's __all__) has a docstring, so the
  generated reference never shows an empty entry.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
from pathlib import Path

import pytest

from pawsight.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CLI_PAGE = DOCS / "cli.md"
API_PAGE = DOCS / "python-api.md"
README_MAX_LINES = 200


# -- the command-line reference ------------------------------------------------------------------------------

def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(("data", "inspect"), parser), ... for the root, every group and every command, recursively."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every --option of this parser itself (not of its sub-commands); --help is everywhere."""
    return sorted({opt for action in parser._actions for opt in action.option_strings
                   if opt.startswith("--") and opt != "--help"})


def sections(markdown: str) -> dict[str, str]:
    """'pawsight data inspect' -> the text under the heading '## `pawsight data inspect`' (any level), up
    to the next heading of the same or a higher level (sub-headings stay inside). Code is not a heading."""
    lines = markdown.splitlines()
    heads = []
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"^(#{1,6})\s+(.*?)\s*$", line)
        if m:
            heads.append((i, len(m.group(1)), m.group(2).replace("`", "").strip()))
    out = {}
    for n, (i, level, title) in enumerate(heads):
        end = next((j for j, lv, _ in heads[n + 1:] if lv <= level), len(lines))
        out[title] = "\n".join(lines[i + 1:end])
    return out


def mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def undocumented(parser: argparse.ArgumentParser, page: str) -> list[str]:
    """What the page is missing: 'pawsight X' (no heading) or 'pawsight X --opt' (not in its section)."""
    found = sections(page)
    missing = []
    for path, sub in commands(parser):
        name = " ".join(("pawsight", *path))
        if name not in found:
            missing.append(f"{name} (no heading '## `{name}`')")
            continue
        missing += [f"{name} {opt}" for opt in long_options(sub) if not mentions(found[name], opt)]
    return missing


def test_cli_reference_names_every_command_and_option():
    missing = undocumented(build_parser(), CLI_PAGE.read_text(encoding="utf-8"))
    assert not missing, "docs/cli.md does not document: " + "; ".join(missing)


def test_every_argument_says_what_it_is_in_help():
    """`pawsight CMD --help` explains every positional and option (argparse shows a bare name otherwise)."""
    bare = [f"{' '.join(path) or 'pawsight'}: {action.option_strings or action.dest}"
            for path, parser in commands(build_parser()) for action in parser._actions
            if not action.help and not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)]
    assert bare == []


def test_cli_check_catches_an_undocumented_option():
    """The check above is not vacuous: an option the page does not name is reported, and so is a command."""
    parser = build_parser()
    page = CLI_PAGE.read_text(encoding="utf-8")
    sub = dict(commands(parser))[("train",)]
    sub.add_argument("--frobnicate-the-widgets", action="store_true")
    assert undocumented(parser, page) == ["pawsight train --frobnicate-the-widgets"]
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    top.add_parser("frobnicate")
    assert "pawsight frobnicate (no heading '## `pawsight frobnicate`')" in undocumented(parser, page)


def test_cli_reference_sees_nested_commands():
    paths = {path for path, _ in commands(build_parser())}
    assert {("data", "inspect"), ("data", "download"), ("cache", "info"), ("cache", "clear")} <= paths
    assert "--max-megapixels" in long_options(dict(commands(build_parser()))[("serve",)])


# -- README and links ---------------------------------------------------------------------------------------

def test_readme_is_a_front_door():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move it to docs/"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(markdown: str) -> list[str]:
    """Targets of Markdown links and images outside code, without anchors; URLs and pure anchors left out."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(page: Path):
    broken = [t for t in relative_links(page.read_text(encoding="utf-8")) if not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_link_finder_sees_links_and_images():
    text = "[a](docs/x.md#y) ![b](img.png) [c](https://e.org) [d](#here) `[e](code.md)`"
    assert relative_links(text) == ["docs/x.md", "img.png"]


# -- the Python API reference -------------------------------------------------------------------------------

def api_page_objects() -> list[str]:
    """'pawsight.api.train', ... : every `::: module` block of the API page with its `members:` list, and
    every `::: module.Object` block itself."""
    names = []
    lines = API_PAGE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^:::\s+([\w.]+)\s*$", line)
        if not m:
            continue
        target, members = m.group(1), []
        j = i + 1
        while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
            item = re.match(r"^\s+-\s+(\w+)\s*$", lines[j])
            if item:
                members.append(item.group(1))
            j += 1
        names += [f"{target}.{name}" for name in members] or [target]
        if members and "." in target and target.split(".")[-1][:1].isupper():
            names.append(target)  # a class documented with chosen members: its own docstring too
    return names


def resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_api_page_documents_the_api():
    names = api_page_objects()
    for name in ("train", "evaluate", "predict", "load"):
        assert f"pawsight.api.{name}" in names


def test_every_documented_function_has_a_docstring():
    import pawsight
    import pawsight.api as api

    public = set(getattr(api, "__all__", [])) | {n for n in pawsight.__all__ if not n.startswith("_")}
    names = set(api_page_objects()) | {f"pawsight.api.{n}" for n in public if callable(getattr(api, n, None))}
    empty = [n for n in sorted(names) if not (inspect.getdoc(resolve(n)) or "").strip()]
    assert not empty, f"no docstring (the API reference would show nothing): {empty}"
