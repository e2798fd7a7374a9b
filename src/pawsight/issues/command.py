"""`pawsight data issues DATA`: find, rank and show the problems of a collection (find.py, output.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import PawsightError, shown
from ..storage import CSV_MARKER, HTML_MARKER, check_output_file
from .find import find_issues
from .output import print_table, write_csv, write_gallery


def _output(given: Path | None, default: str, marker: bytes, data: Path, option: str) -> Path | None:
    """The user's file is checked before any work (an error stops the command); a refused default name is a
    warning and the command goes on without that file."""
    if given is not None:
        return check_output_file(given, marker, data=data, option=option)
    path = Path(f"{data.resolve().name or 'data'}-{default}")
    try:
        return check_output_file(path, marker, data=data, option=option)
    except PawsightError as exc:
        print(f"warning: not writing {shown(path)}: {shown(exc)} (choose a file with {option})",
              file=sys.stderr)
        return None


def issues_command(args: argparse.Namespace) -> int:
    data = Path(args.data)
    csv_path = _output(args.csv, "issues.csv", CSV_MARKER, data, "--csv")
    html_path = _output(args.html, "issues.html", HTML_MARKER, data, "--html")
    result = find_issues(data, val_fraction=args.val_fraction, seed=args.seed, model=args.model)
    decoded = result.pop("_decoded")
    written = []
    for path, marker, write, what in ((csv_path, CSV_MARKER, write_csv, "CSV"),
                                      (html_path, HTML_MARKER, write_gallery, "gallery")):
        if path is None:
            continue
        try:
            check_output_file(path, marker, data=data)  # a file may have appeared meanwhile
            if write is write_csv:
                write_csv(path, result)
            else:
                write_gallery(path, result, decoded)
            written.append(path)
        except PawsightError as exc:  # a full disk: the findings are still worth printing
            print(f"warning: no {what}: {shown(exc)}", file=sys.stderr)
    result.pop("_rows")
    csv_out = csv_path if csv_path in written else None
    html_out = html_path if html_path in written else None
    if args.json:
        print(json.dumps({**result, "csv": str(csv_out) if csv_out else None,
                          "html": str(html_out) if html_out else None}, indent=2))
    else:
        print_table(result, csv_out, html_out)
    return 0
