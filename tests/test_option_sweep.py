"""Every numeric option of every command refuses every impossible value with one line and exit status 2,
before any work (issue 14, item 10).

The test walks the real parser (`pawsight.cli.build_parser()`): every sub-command and nested sub-command,
every option that takes a number. Each must check its value against options.LIMITS (its `type` is an
options.cli_type converter, which carries the limits); which of nan, inf, -1, 0, 1e30 and '' are invalid
for an option is decided from those limits, not from a hand-made list, and each invalid one is fed to
`pawsight.cli.main`. `--threshold nan` (every picture "unknown") and `serve --max-upload-mb nan` (exit 3)
were accepted before.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pawsight.cli import build_parser, main, parse_duration
from pawsight.errors import PawsightError
from pawsight.options import LIMITS, check_number

VALUES = ("nan", "inf", "-1", "0", "1e30", "")
NUMERIC_TYPES = (int, float, parse_duration)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(sub-command path, its parser) for every command and nested sub-command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from commands(sub, (*path, name))


def positionals(parser: argparse.ArgumentParser) -> list[str]:
    """Placeholder values for the required positional arguments: parsing refuses the option first."""
    out = []
    for a in parser._actions:
        subcommands = isinstance(a, argparse._SubParsersAction)
        if not a.option_strings and not subcommands and a.nargs not in ("?", "*"):
            out.append("x")
    return out


def is_numeric(action: argparse.Action) -> bool:
    return action.type in NUMERIC_TYPES or getattr(action.type, "limits", None) is not None


def numeric_options() -> list[tuple[tuple[str, ...], argparse.ArgumentParser, argparse.Action]]:
    found = []
    for path, parser in commands(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.nargs != 0 and action.choices is None and is_numeric(action):
                found.append((path, parser, action))
    return found


OPTIONS = numeric_options()


def invalid(action: argparse.Action, text: str) -> bool:
    """Whether `text` is refused by the option's limits (its own parsing, e.g. of durations, first)."""
    convert = action.type
    try:
        value = convert.parse(text) if convert.parse is not None else text
        check_number("x", value, **convert.limits)
    except (PawsightError, argparse.ArgumentTypeError):
        return True
    return False


def test_the_sweep_sees_every_numeric_option() -> None:
    flags = {(" ".join(path), a.option_strings[-1]) for path, _, a in OPTIONS}
    for expected in [("predict", "--threshold"), ("evaluate", "--threshold"), ("serve", "--threshold"),
                     ("serve", "--max-upload-mb"), ("serve", "--port"), ("serve", "--workers"),
                     ("serve", "--max-batch"), ("predict", "--batch-size"), ("compare", "--time-budget"),
                     ("advise", "--time-budget"), ("advise", "--seed"), ("advise", "--val-fraction"),
                     ("compare", "--seed"), ("report", "--top-k"), ("train", "--lr"),
                     ("data inspect", "--size"), ("serve", "--max-megapixels")]:
        assert expected in flags
    assert len(OPTIONS) >= 25


@pytest.mark.parametrize(("path", "action"), [(p, a) for p, _, a in OPTIONS],
                         ids=[f"{' '.join(p)} {a.option_strings[-1]}" for p, _, a in OPTIONS])
def test_every_numeric_option_has_limits(path: tuple[str, ...], action: argparse.Action) -> None:
    limits = getattr(action.type, "limits", None)
    assert limits is not None and limits in LIMITS.values(), \
        f"{' '.join(path)} {action.option_strings[-1]} is not checked against options.LIMITS (cli_type)"
    for text in ("nan", "inf", ""):  # never a value, whatever the limits
        assert invalid(action, text)


CASES = [(path, parser, action, text) for path, parser, action in OPTIONS for text in VALUES
         if getattr(action.type, "limits", None) is None or invalid(action, text)]


@pytest.mark.parametrize(("path", "parser", "action", "text"), CASES,
                         ids=[f"{' '.join(p)} {a.option_strings[-1]}={t!r}" for p, _, a, t in CASES])
def test_invalid_values_are_one_line_and_exit_2(path: tuple[str, ...], parser: argparse.ArgumentParser,
                                                action: argparse.Action, text: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*path, *positionals(parser), f"{action.option_strings[-1]}={text}"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    captured = capsys.readouterr()
    assert stop.value.code == 2, (argv, captured.err)
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, captured.err)
    assert action.option_strings[-1] in lines[0] and "Traceback" not in captured.err
    assert captured.out == ""


def test_valid_edge_values_still_parse() -> None:
    """What the limits allow is not refused: port 0 (a free port), validation fraction 0, top losses 0."""
    parser = build_parser()
    assert parser.parse_args(["serve", "RUN", "--port", "0"]).port == 0
    assert parser.parse_args(["advise", "DATA", "--val-fraction", "0"]).val_fraction == 0
    assert parser.parse_args(["report", "RUN", "--top-k", "0"]).top_k == 0
    assert parser.parse_args(["predict", "RUN", "x", "--threshold", "0.5"]).threshold == 0.5
    assert parser.parse_args(["compare", "DATA", "--time-budget", "1h30m"]).time_budget == 5400


@pytest.mark.parametrize("argv", [
    ["predict", "RUN", "x.jpg", "--threshold", "nan"], ["serve", "RUN", "--max-upload-mb", "inf"],
    ["advise", "DATA", "--time-budget", "0"],
])
def test_in_a_real_process(argv: list[str], tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pawsight", *argv], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: "), r.stderr
