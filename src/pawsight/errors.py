"""The one exception type whose message is shown to the user as is (no traceback), exit statuses, and the
one function that makes user-supplied names safe to print."""

from __future__ import annotations

import re

# Exit statuses of the `pawsight` command (README: "Exit statuses").
EXIT_OK = 0            # everything asked for was done
EXIT_SKIPPED = 1       # done, but some inputs were skipped (unreadable files, ...); each named on stderr
EXIT_USAGE = 2         # a problem the user can fix: bad option, missing folder, full disk, ...
EXIT_BUG = 3           # an unexpected error inside pawsight (traceback saved to a log file)
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM; a training can be continued with --resume


class PawsightError(Exception):
    """A problem the user can fix: bad arguments, missing folders, incompatible run directories."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def shown(text: object) -> str:
    """`text` safe for a terminal line: control characters (ANSI escapes, newlines, bidi overrides) become
    visible escapes such as \\x1b or \\n, so a file or folder name can neither recolour the terminal nor
    forge a line of output."""
    s = str(text)
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s)


def damaged_file_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged, truncated or tampered model/checkpoint file raises (parsers, array readers,
    safetensors, a state dict of the wrong shapes): turned into one sentence. Anything else — AttributeError,
    NameError, ... — is a bug in pawsight and must reach the bug path (exit 3 with a log), not read as "your
    file is damaged"."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, TypeError, IndexError,
                                               RuntimeError, EOFError, UnicodeError, OverflowError)
    try:
        from safetensors import SafetensorError
    except ImportError:  # safetensors is a base dependency; only a broken install lacks it
        return errors
    return (*errors, SafetensorError)


def note(message: str) -> None:
    """One `note:` line on stderr: what pawsight decided on its own (a fallback, a changed setting), so a
    silent change of behaviour is never silent."""
    import sys

    print(f"note: {message}", file=sys.stderr)
