"""`pawsight predict`: label pictures from files, folders, glob patterns or stdin, streaming.

Inputs are expanded lazily (folders walked with os.scandir as they are read, globs with glob.iglob, stdin line
by line), read in batches by a thread pool while the model runs the previous batch on ONNX Runtime (both
cores), and each batch's answers are written before the next is read: memory stays flat on a folder of a
million files, and the first answers appear at once. Labels come from `inference.decide` like everywhere.
`--engine ray` gives the same answers from a Ray cluster (ray_engine.py); `--out DIR` writes them to a file.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from .data import Skip, is_hidden
from .errors import EXIT_OK, EXIT_SKIPPED, PawsightError, shown
from .images import IMAGE_SUFFIXES

GLOB_CHARS = set("*?[")


def iter_inputs(items: list[str], stdin: TextIO | None = None) -> Iterator[str | Skip]:
    """Every file named by `items`, lazily: files as given, folders recursively (hidden entries skipped,
    symlink loops cut), glob patterns expanded, "-" = one path per line on stdin."""
    for item in items:
        if item == "-":
            for line in stdin if stdin is not None else sys.stdin:
                line = line.rstrip("\r\n")
                if line and Path(line).is_dir():
                    yield from walk(Path(line))
                elif line:
                    yield line  # literal paths: no glob expansion for what a program printed
            continue
        path = Path(item)
        if path.is_dir():
            yield from walk(path)
        elif os.path.lexists(item):
            yield item
        elif GLOB_CHARS & set(item):
            matched = False
            for found in glob.iglob(item, recursive=True):
                matched = True
                if Path(found).is_dir():
                    yield from walk(Path(found))
                else:
                    yield found
            if not matched:
                yield Skip(item, NO_MATCH)
        else:
            yield Skip(item, NO_SUCH_PATH)


NO_MATCH, NO_SUCH_PATH = "no file matches this pattern", "no such file or folder"


def walk(folder: Path, seen: set[str] | None = None) -> Iterator[str | Skip]:
    """Files below `folder` in filesystem order, streamed (a folder is never listed whole in memory)."""
    seen = set() if seen is None else seen
    real = os.path.realpath(folder)
    if real in seen:
        yield Skip(str(folder), "symlink loop (folder already visited)")
        return
    seen.add(real)
    try:
        entries = os.scandir(folder)
    except OSError as exc:
        yield Skip(str(folder), f"cannot list folder: {exc.strerror or exc}")
        return
    with entries:
        for entry in entries:
            if is_hidden(entry.name):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if not is_dir:
                yield entry.path
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                yield Skip(entry.path, "is a directory, not an image file")
            else:
                yield from walk(Path(entry.path), seen)


def predict_stream(predictor: Any, inputs: Iterator[str | Skip], batch_size: int = 32
                   ) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """(path, record, None) or (path, None, reason) per input, in input order."""
    from .inference import predict_files

    pending: list[str] = []

    def flush() -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
        yield from predict_files(predictor, list(pending), batch_size=batch_size)
        pending.clear()

    for item in inputs:
        if isinstance(item, Skip):
            yield from flush()
            yield item.path, None, item.reason
        else:
            pending.append(item)
            if len(pending) >= batch_size * 8:  # several batches per call keep the decode pipeline full
                yield from flush()
    yield from flush()


class Writer:
    """table / json (one object per line) / csv rows on stdout; reasons for skipped files on stderr.

    Every format shows the same answer record (inference.answer_record): the label, the closest class with
    its probability (also when the answer is "unknown") and the neither score against its threshold."""

    def __init__(self, fmt: str, classes: list[str], top_k: int, out: TextIO) -> None:
        self.fmt, self.classes, self.top_k, self.out = fmt, classes, max(1, top_k), out
        self.csv = csv.writer(out) if fmt == "csv" else None
        if self.csv is not None:  # CSV cells are shown(): an ESC in a class or file name never reaches a
            # terminal (JSON escapes control characters itself and keeps the exact names)
            self.csv.writerow(["path", "label", "closest", "probability", *[f"p_{shown(c)}" for c in classes],
                               "unknown_score", "unknown_threshold", "error"])

    def answer(self, path: str, record: dict[str, Any]) -> None:
        from .inference import UNKNOWN, top_classes, why_unknown

        top = top_classes(record["probabilities"], self.top_k)
        if self.fmt == "json":
            obj = {"path": path, **record}
            if self.top_k > 1:
                obj["top"] = top
            self.out.write(json.dumps(obj) + "\n")
        elif self.csv is not None:
            score, threshold = record["unknown_score"], record["unknown_threshold"]
            self.csv.writerow([shown(path), shown(record["label"]), shown(record["closest"]),
                               f"{record['probability']:.6f}",
                               *[f"{record['probabilities'][c]:.6f}" for c in self.classes],
                               "" if score is None else f"{score:.6f}",
                               "" if threshold is None else f"{threshold:.6f}", ""])
        else:
            cells = [shown(path), shown(record["label"])]
            if record["label"] == UNKNOWN:  # what was closest, then why it is unknown
                cells += ["closest " + "  ".join(f"{shown(t['label'])} {t['probability']:.3f}" for t in top),
                          why_unknown(record)]
            else:
                cells += [f"{record['probability']:.3f}",
                          *(["  ".join(f"{shown(t['label'])} {t['probability']:.3f}" for t in top[1:])]
                            if len(top) > 1 else [])]
            self.out.write("\t".join(cells) + "\n")

    def skipped(self, path: str, reason: str) -> None:
        if self.fmt == "json":
            self.out.write(json.dumps({"path": path, "error": reason}) + "\n")
        elif self.csv is not None:
            self.csv.writerow([shown(path), "", "", "", *["" for _ in self.classes], "", "", shown(reason)])
        print(f"skipped {shown(path)}: {shown(reason)}", file=sys.stderr)


class ParquetWriter:
    """The CSV columns as a typed Parquet table (`--format parquet --out DIR`), written in row groups as the
    answers come; reasons for skipped files on stderr as for every format. Needs pyarrow (the ray extra)."""

    ROWS = 4096

    def __init__(self, classes: list[str], path: Path) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise PawsightError("--format parquet needs pyarrow: pip install pyarrow "
                                "(or pip install 'pawsight[ray]', which brings it)") from None
        self.pa, self.classes = pa, classes
        f64, text = pa.float64(), pa.string()
        self.schema = pa.schema([("path", text), ("label", text), ("closest", text), ("probability", f64),
                                 *[(f"p_{c}", f64) for c in classes], ("unknown_score", f64),
                                 ("unknown_threshold", f64), ("error", text)])
        self.file = pq.ParquetWriter(str(path), self.schema)
        self.rows: list[dict[str, Any]] = []

    def answer(self, path: str, record: dict[str, Any]) -> None:
        self.rows.append({"path": path, "label": record["label"], "closest": record["closest"],
                          "probability": record["probability"],
                          **{f"p_{c}": record["probabilities"][c] for c in self.classes},
                          "unknown_score": record["unknown_score"],
                          "unknown_threshold": record["unknown_threshold"], "error": None})
        if len(self.rows) >= self.ROWS:
            self.flush()

    def skipped(self, path: str, reason: str) -> None:
        self.rows.append({"path": path, "error": reason})
        print(f"skipped {shown(path)}: {shown(reason)}", file=sys.stderr)
        if len(self.rows) >= self.ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.file.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.file.close()


OUT_FILES = {"json": "predictions.jsonl", "csv": "predictions.csv", "parquet": "predictions.parquet"}


class Output:
    """Where the answers go: stdout, or with `--out DIR` one file in DIR (a folder pawsight marks as its own;
    see storage.claim_folder), written under a temporary name and renamed when every answer is in."""

    def __init__(self, fmt: str, classes: list[str], top_k: int, out: Path | None) -> None:
        from .storage import claim_folder

        self.out = out
        self.writer: Any
        self.final: Path | None = None
        self.partial: Path | None = None
        self.fh: TextIO | None = None
        if out is None:
            self.writer = Writer(fmt, classes, top_k, sys.stdout)
            return
        folder = claim_folder(out, "predictions")
        self.final = folder / OUT_FILES[fmt]
        self.partial = folder / f".{OUT_FILES[fmt]}.partial"
        if fmt == "parquet":
            self.writer = ParquetWriter(classes, self.partial)
        else:
            self.fh = open(self.partial, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in finish
            self.writer = Writer(fmt, classes, top_k, self.fh)

    def finish(self, ok: bool) -> None:
        if self.final is None or self.partial is None:
            return
        from .storage import fsync_dir, writing

        with writing("the predictions", self.final):
            if isinstance(self.writer, ParquetWriter):
                self.writer.close()
            if self.fh is not None:
                self.fh.flush()
                os.fsync(self.fh.fileno())
                self.fh.close()
            if ok:
                os.replace(self.partial, self.final)
                fsync_dir(self.final.parent)
            else:
                self.partial.unlink(missing_ok=True)


def predict_command(args: argparse.Namespace) -> int:
    from .inference import load
    from .progress import bar

    out, engine = getattr(args, "out", None), getattr(args, "engine", "local")
    fmt = "json" if args.json else (args.format or ("json" if out is not None else "table"))
    if fmt == "parquet" and out is None:
        raise PawsightError("--format parquet writes a file: give --out DIR")
    if fmt == "table" and out is not None:
        raise PawsightError("--format table is for the terminal; with --out use json, csv or parquet")
    if getattr(args, "address", None) and engine != "ray":
        raise PawsightError("--address is the Ray cluster's address: add --engine ray")
    if args.images.count("-") > 1:
        raise PawsightError("'-' (paths on stdin) can be given only once")
    missing = [p for p in args.images if p != "-" and not os.path.lexists(p)
               and (not GLOB_CHARS & set(p) or next(glob.iglob(p, recursive=True), None) is None)]
    if len(missing) == len(args.images):
        patterns = sum(bool(GLOB_CHARS & set(p)) for p in missing)
        what = ("no such file or folder" if not patterns else "no file matches" if patterns == len(missing)
                else "no such file or folder, and no file matches the patterns")
        raise PawsightError(f"{what}: {', '.join(shown(p) for p in missing)}")
    if out is not None:
        from .storage import refuse_inside_data

        refuse_inside_data(out, [p for p in args.images if p != "-" and Path(p).is_dir()])
    predictor = load(args.run, threshold=args.threshold)
    if engine == "ray":
        from .ray_engine import predict_stream as ray_stream

        stream = ray_stream(args.run, iter_inputs(args.images), threshold=args.threshold,
                            batch_size=args.batch_size, address=args.address)
    else:
        stream = predict_stream(predictor, iter_inputs(args.images), args.batch_size)
    sink = Output(fmt, predictor.classes_, args.top_k, out)
    writer = sink.writer
    n_skipped = n_labelled = n_missing = 0
    ok = False
    try:
        with bar(total=None, desc="predicting", unit="img") as progress:
            for path, record, reason in stream:
                if record is None:
                    n_skipped += 1
                    n_missing += reason in (NO_MATCH, NO_SUCH_PATH)
                    writer.skipped(path, str(reason))
                else:
                    n_labelled += 1
                    writer.answer(path, record)
                progress.update(1)
        if out is None:
            sys.stdout.flush()
        ok = True
    except BrokenPipeError:  # `pawsight predict ... | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        stream.close()  # the Ray engine disconnects (and stops the Ray it started) now, not at exit
        if out is not None:
            sink.finish(ok)
    if not n_labelled:  # nothing labelled is a usage error (exit 2), as for any other command
        where = ", ".join(shown(p) for p in args.images)
        if n_skipped and n_missing == n_skipped:
            raise PawsightError(f"no such file, and no file matches: {where}")
        raise PawsightError(f"none of the {n_skipped - n_missing} file(s) in {where} is a readable picture"
                            if n_skipped else f"no pictures found in {where}")
    if out is not None:
        print(f"wrote {n_labelled + n_skipped} answers to {shown(sink.final)}", file=sys.stderr)
    return EXIT_SKIPPED if n_skipped else EXIT_OK
