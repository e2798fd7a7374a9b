"""`pawsight` command line: one set of commands for every approach.

    pawsight data inspect DATA [--json]          what is in a data folder (and warms the decode cache)
    pawsight data download cats-vs-dogs          fetch a standard data set into the cache
    pawsight train DATA --approach A --out RUN   train; A = transfer (default), classical or scratch
    pawsight train --resume RUN                  continue an interrupted training
    pawsight evaluate RUN DATA [--json]          score a run on labelled pictures
    pawsight predict RUN IMAGE... [--json]       label new pictures
    pawsight cache info | clear [PART...]        what the cache folder holds; free it
    pawsight serve RUN [--port 8000]             a web page and REST API (a run or an exported .onnx)
    pawsight plot RUN                            training curves and evaluation views as PNGs in RUN/plots/
    pawsight explain RUN IMAGE [--out FILE.png]  what the model looked at (Grad-CAM, occlusion, features)
    pawsight report RUN [--data DIR]             one self-contained HTML report of a run

Errors the user can fix are printed as one line (`error: ...`, exit status 2); never a traceback.
Exit statuses (errors.py, README "Exit statuses"): 0 done, 1 done but some inputs were skipped,
2 a problem the user can fix, 3 a bug in pawsight, 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, EXIT_SKIPPED, EXIT_USAGE, PawsightError, shown
from .options import cli_type

# CLI option -> model constructor parameter, for options that only some approaches accept.
MODEL_OPTIONS = {"model": "model", "features": "features", "mode": "mode", "epochs": "epochs",
                 "time_budget": "time_budget", "device": "device", "weights": "weights", "size": "size",
                 "search": "search", "batch_size": "batch_size", "lr": "lr", "tta": "tta"}


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1h30m' -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or "".join(a + b for a, b in parts) != text.replace(" ", ""):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 90s, 10m, 1h30m)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def parse_set_params(items: list[str]) -> dict[str, Any]:
    """['pca=256', 'flip=false', 'model=knn'] -> {'pca': 256, 'flip': False, 'model': 'knn'}."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise PawsightError(f"--set takes NAME=VALUE, got {item!r}")
        low = text.strip().lower()
        if low in ("true", "false", "none", "null"):
            value: Any = {"true": True, "false": False}.get(low)
        else:
            try:
                value = json.loads(text)
            except ValueError:
                value = text
        out[name.strip()] = value
    return out


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is ONE line (`error: ...`, exit status 2) like every other error; the
    usage is one `--help` away. Sub-command parsers inherit this class."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {shown(message)} (see '{shown(self.prog)} --help')", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pawsight", description="Image recognition from folders of pictures.")
    p.add_argument("--version", action="version", version=f"pawsight {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="inspect or download data sets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    ins = dsub.add_parser("inspect", help="classes, counts, bad files, duplicates and leaks of a data folder")
    ins.add_argument("data", type=Path, help="folder of class sub-folders (or train/ validation/ splits)")
    ins.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ins.add_argument("--sheet", type=Path, default=None,
                     help="contact sheet PNG to write (default: DATA-contact-sheet.png here)")
    ins.add_argument("--size", type=cli_type("size"), default=224,
                     help="working resolution decoded into the cache (16-1024 px)")
    ins.add_argument("--val-fraction", type=cli_type("val_fraction"), default=0.2,
                     help="share of each class held out for validation, as train would split (default 0.2)")
    ins.add_argument("--seed", type=cli_type("seed"), default=0,
                     help="seed of that split, as for train (default 0)")
    iss = dsub.add_parser("issues", help="likely wrong labels, outliers, bad pictures and copies, before "
                                         "training (a ranked list, a CSV for train --exclude, a gallery)")
    iss.add_argument("data", type=Path, help="folder of class sub-folders (or train/ validation/ splits)")
    iss.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    iss.add_argument("--csv", type=Path, default=None,
                     help="flagged pictures to write, editable, for train --exclude "
                          "(default: DATA-issues.csv here)")
    iss.add_argument("--html", type=Path, default=None,
                     help="gallery of the flagged pictures to write (default: DATA-issues.html here)")
    iss.add_argument("--model", default=None,
                     help="pretrained backbone whose features judge labels and outliers "
                          "(default: the default transfer model, so training reuses them)")
    iss.add_argument("--val-fraction", type=cli_type("val_fraction"), default=0.2,
                     help="share of each class held out for validation, as train would split (default 0.2)")
    iss.add_argument("--seed", type=cli_type("seed"), default=0,
                     help="seed of that split and of the cross-validation folds (default 0)")
    dl = dsub.add_parser("download", help="download a standard data set (e.g. cats-vs-dogs)",
                         epilog="Downloads resume after an interruption and are checked (size, SHA-256). "
                                "Set PAWSIGHT_DATASETS_URL=http://host/path/ to fetch the archives from a "
                                "mirror instead of the publishers' sites.")
    dl.add_argument("name", help="data set name; 'pawsight data download --list' shows them", nargs="?")
    dl.add_argument("--list", action="store_true", help="list the known data sets")
    dl.add_argument("--dir", type=Path, default=None, help="where to keep it (default: the pawsight cache)")
    dl.add_argument("--print-path", action="store_true",
                    help="print only the data folder path on stdout (messages go to stderr), for scripts")

    tr = sub.add_parser("train", help="train a classifier and write a run directory")
    tr.add_argument("data", type=Path, nargs="?", help="folder of class sub-folders (or train/ validation/)")
    tr.add_argument("--approach", choices=["transfer", "classical", "scratch", "auto"], default=None,
                    help="transfer learning (default), classical features + scikit-learn, "
                         "a CNN from scratch, or auto: choose by cross-validation on the training split "
                         "within --time-budget (default 10m for auto)")
    tr.add_argument("--out", type=Path, default=None,
                    help="run directory to write (default: runs/<approach>-<time>)")
    tr.add_argument("--resume", type=Path, default=None, metavar="RUN", help="continue an interrupted run")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace an existing pawsight run directory (only the files pawsight wrote; refused "
                         "when the folder holds anything else)")
    tr.add_argument("--seed", type=cli_type("seed"), default=0, help="0 to 2**32-1 (default: 0)")
    tr.add_argument("--val-fraction", type=cli_type("val_fraction"), default=0.2,
                    help="share of pictures held out for validation when DATA is not pre-split: 0 <= F < 1; "
                         "0 trains on every picture and reports no validation accuracy (default: 0.2)")
    tr.add_argument("--exclude", type=Path, default=None, metavar="CSV",
                    help="leave out the pictures listed in CSV (the file `pawsight data issues` writes, rows "
                         "with exclude=yes; or any list of paths); the run records what was left out")
    tr.add_argument("--drop-duplicates", action="store_true",
                    help="drop duplicate pictures, conflicting labels and train/validation leaks "
                         "before training")
    g = tr.add_argument_group("model options (which ones apply depends on --approach)")
    g.add_argument("--model", help="classical: svm-rbf, linear-svm, logreg, knn, forest, ...; "
                                   "transfer: efficientnet_lite0 (default), resnet50, timm:NAME, ...")
    g.add_argument("--features", help="classical: comma-separated extractors, e.g. hog,color,lbp")
    g.add_argument("--mode", help="transfer: frozen (default) or finetune")
    g.add_argument("--epochs", type=cli_type("epochs"), help="deep learning: number of epochs (at least 1)")
    g.add_argument("--time-budget", type=cli_type("time_budget", parse_duration), metavar="DURATION",
                   help="deep learning: plan the schedule to finish in e.g. 10m")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: a GPU when there is one)")
    g.add_argument("--weights", type=Path, help="transfer: a local weights file for the backbone")
    g.add_argument("--size", type=cli_type("size"), help="working image size in pixels (16-1024)")
    g.add_argument("--search", action="store_true", default=None,
                   help="classical: small cross-validated hyper-parameter search")
    g.add_argument("--batch-size", type=cli_type("batch_size"),
                   help="deep learning: pictures per step (>= 1)")
    g.add_argument("--lr", type=cli_type("lr"), help="deep learning: peak learning rate (> 0)")
    g.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="deep learning: flip test-time augmentation")
    g.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="set_params",
                   help="any other model parameter, e.g. --set pca=256 --set C=3 --set flip=false "
                        "(repeatable; the error for an unknown NAME lists what the approach accepts)")
    tr.add_argument("--json", action="store_true", help="print run.json on stdout when done")

    ev = sub.add_parser("evaluate", help="score a trained run on a folder of class sub-folders")
    ev.add_argument("run", type=Path, help="run directory or exported .onnx file")
    ev.add_argument("data", type=Path, help="labelled pictures: a folder of class sub-folders")
    ev.add_argument("--split", default=None, help="train, validation, test or all (default: test if present, "
                                                  "else the pictures the run validated on when DATA is its "
                                                  "training folder, else validation of a pre-split folder, "
                                                  "else all)")
    ev.add_argument("--json", action="store_true",
                    help="print the whole evaluation (metrics, per-picture answers) as one JSON object")
    ev.add_argument("--no-save", action="store_true",
                    help="do not save this evaluation under RUN/evaluations/")
    ev.add_argument("--threshold", type=cli_type("threshold"), default=None,
                    help="neither-score threshold above which a picture is answered 'unknown' "
                         "(default: the one calibrated when the run was trained)")

    pr = sub.add_parser("predict", help="label new pictures (a run directory or an exported .onnx file)",
                        epilog="Folders are searched recursively and streamed (constant memory, filesystem "
                               "order); glob patterns are expanded by pawsight ('photos/**/*.jpg'); '-' "
                               "reads one path per line from stdin. Exit status 1 when a file was skipped.")
    pr.add_argument("run", type=Path, help="run directory or .onnx file")
    pr.add_argument("images", nargs="+", help="image files, folders, glob patterns, or - for paths on stdin")
    pr.add_argument("--format", choices=["table", "json", "csv", "parquet"], default=None,
                    help="table (default), json (one object per line per picture), csv, or parquet "
                         "(with --out)")
    pr.add_argument("--json", action="store_true", help="same as --format json")
    pr.add_argument("--top-k", type=cli_type("top_k"), default=1,
                    help="also show the K most probable classes (at least 1)")
    pr.add_argument("--threshold", type=cli_type("threshold"), default=None,
                    help="neither-score threshold above which a picture is answered 'unknown' "
                         "(default: the one calibrated when the run was trained)")
    pr.add_argument("--batch-size", type=cli_type("batch_size"), default=32,
                    help="pictures decoded and run together")
    pr.add_argument("--out", type=Path, default=None, metavar="DIR",
                    help="write the answers to DIR/predictions.jsonl (or .csv, .parquet with --format) "
                         "instead of stdout")
    pr.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="local (default: this machine's cores) or ray (a Ray cluster, with Ray Data; "
                         "needs pip install 'pawsight[ray]')")
    pr.add_argument("--address", default=None, metavar="ADDR",
                    help="--engine ray: the cluster's address, host:port (default: RAY_ADDRESS, else a "
                         "local Ray started for the command)")

    ex = sub.add_parser("export", help="write a deep-learning run as one ONNX file (runs without PyTorch)",
                        epilog="The file holds the whole model (uint8 pictures in, probabilities and the "
                               "neither score out) and, in its metadata, the classes, preprocessing and "
                               "unknown-threshold. Parity with PyTorch is checked on sample pictures.")
    ex.add_argument("run", type=Path, help="run directory of a transfer or scratch run")
    ex.add_argument("--format", choices=["onnx"], default="onnx", help="file format (only onnx)")
    ex.add_argument("--out", type=Path, default=None, help="file to write (default: RUN/model.onnx)")

    sv = sub.add_parser("serve", help="a web page and REST API for a run directory or an exported .onnx file",
                        epilog="Needs the serve extra (pip install 'pawsight[serve]'), not PyTorch. "
                               "The page is at http://HOST:PORT/, the API reference at /docs.")
    sv.add_argument("run", type=Path, help="run directory or exported .onnx file")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: this machine only; 0.0.0.0 for every network)")
    sv.add_argument("--port", type=cli_type("port"), default=8000, help="0-65535; 0: any free port")
    sv.add_argument("--threshold", type=cli_type("threshold"), default=None,
                    help="unknown-threshold instead of the one calibrated at training time")
    sv.add_argument("--max-upload-mb", type=cli_type("max_upload_mb"), default=20.0,
                    help="largest request body (default 20 MB, at most 1024)")
    sv.add_argument("--max-megapixels", type=cli_type("max_megapixels"), default=24.0,
                    help="most pixels one picture may decode to, in millions (default 24: a 6000x4000 photo; "
                         "JPEGs count at the reduced scale they are decoded at); larger ones get 413")
    sv.add_argument("--no-access-log", dest="access_log", action="store_false",
                    help="do not print a line per request (saves ~5%% of the server's CPU under load)")
    sv.add_argument("--max-batch", type=cli_type("max_batch"), default=1,
                    help="micro-batching: most pictures the model takes at once from concurrent requests "
                         "(default 1: no batching, which measured as fast with less memory)")
    sv.add_argument("--workers", type=cli_type("workers"), default=None,
                    help="model threads answering requests at the same time (default: one per core)")
    cmp = sub.add_parser("compare", help="which approach for my data? learning curves of each approach",
                         epilog="Trains each approach on growing, nested per-class subsets of the training "
                                "pictures (same validation pictures) and writes charts, a CSV and an HTML "
                                "leaderboard into --out.")
    cmp.add_argument("data", type=Path, help="folder of class sub-folders to compare the approaches on")
    cmp.add_argument("--approaches", default="classical,transfer",
                     help="comma-separated: classical, transfer, scratch (default: classical,transfer)")
    cmp.add_argument("--sizes", default="10,25,50,100,250,all",
                     help="training pictures per class, comma-separated; 'all' = every training picture")
    cmp.add_argument("--time-budget", type=cli_type("time_budget", parse_duration), default=1200.0,
                     metavar="DURATION",
                     help="for the whole comparison (default 20m); scratch gets what the others leave")
    cmp.add_argument("--out", type=Path, default=None, help="folder to write (default: runs/compare-<time>)")
    cmp.add_argument("--overwrite", action="store_true", help="replace the results of an earlier compare")
    cmp.add_argument("--seed", type=cli_type("seed"), default=0, help="seed of splits and models (default 0)")
    cmp.add_argument("--json", action="store_true", help="print compare.json on stdout")

    add_report_parsers(sub)
    adv = sub.add_parser("advise", help="which approach for my data and machine? time estimates, a "
                                        "recommendation",
                         epilog="Reads the data and the hardware, runs a short calibration (a few seconds of "
                                "each approach's real work here) and estimates each recipe's training time.")
    adv.add_argument("data", type=Path, help="folder of class sub-folders to advise on")
    adv.add_argument("--time-budget", type=cli_type("time_budget", parse_duration), default=600.0,
                     metavar="DURATION",
                     help="how long a training may take (default 10m)")
    adv.add_argument("--seed", type=cli_type("seed"), default=0, help="seed of the split (default 0)")
    adv.add_argument("--val-fraction", type=cli_type("val_fraction"), default=0.2,
                     help="share held out for validation, as train would split (default 0.2)")
    adv.add_argument("--json", action="store_true", help="print the advice as one JSON object")

    from .cachedir import CACHE_PARTS, REBUILT

    ca = sub.add_parser("cache", help="show or free the cache folder ($PAWSIGHT_CACHE, ~/.cache/pawsight)")
    csub = ca.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    info = csub.add_parser("info", help="bytes per part of the cache")
    info.add_argument("--json", action="store_true", help="print the sizes as one JSON object")
    clear = csub.add_parser("clear", help="delete parts of the cache",
                            epilog="parts: " + "; ".join(f"{k}: {v[1]}" for k, v in CACHE_PARTS.items()))
    clear.add_argument("parts", nargs="*", metavar="PART",
                       help=f"what to delete (default: {' '.join(REBUILT)}, which are rebuilt on next use; "
                            "weights and datasets are deleted only when named, or with --all; "
                            "pixels/KEY deletes one resolution shown by 'cache info')")
    clear.add_argument("--all", action="store_true", help="every part, downloads included")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with sigterm_interrupts():
        try:
            return run_command(args)
        except PawsightError as exc:
            print(f"error: {shown(exc)}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"interrupted{interrupted_hint(args)}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except OSError as exc:
            message = os_error_message(exc)
            if message is None:
                raise
            print(f"error: {shown(message)}", file=sys.stderr)
            return EXIT_USAGE
        except MemoryError:
            print("error: out of memory; try a smaller --size or --batch-size", file=sys.stderr)
            return EXIT_USAGE
        except Exception as exc:  # noqa: BLE001 - a bug still gets one line; the traceback goes to a file
            if os.environ.get("PAWSIGHT_DEBUG"):
                raise
            log = save_traceback()
            print(f"error: unexpected {type(exc).__name__} inside pawsight: {shown(exc)} "
                  f"(details in {shown(log)}; please report it)", file=sys.stderr)
            return EXIT_BUG


# errno -> what to do about it; these come from the user's files and disks, not from a bug in pawsight
_OS_ADVICE = {errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
              errno.ENOENT: "check the path", errno.ENOTDIR: "a file is where a folder is expected",
              errno.EISDIR: "a folder is where a file is expected", errno.EEXIST: "something is in the way",
              errno.EROFS: "the disk is read-only", errno.ENOSPC: "free some space ('pawsight cache clear' "
                                                                  "frees rebuildable cache files)",
              errno.EDQUOT: "free some space", errno.ENAMETOOLONG: "use a shorter path",
              errno.ELOOP: "a symbolic link loops", errno.EIO: "the disk reported an error"}


def os_error_message(exc: OSError) -> str | None:
    """One line for a file-system error the user can fix (permissions, a missing or misplaced path, a full
    or read-only disk) that no more specific message caught; None for anything else (a bug)."""
    if exc.errno not in _OS_ADVICE:
        return None
    where = f": {exc.filename}" if exc.filename is not None else ""
    return f"{exc.strerror or type(exc).__name__}{where} ({_OS_ADVICE[exc.errno]})"


class sigterm_interrupts:  # noqa: N801 - used as a statement: `with sigterm_interrupts():`
    """SIGTERM (kill, a scheduler's stop, a closed container) stops pawsight the way Ctrl-C does: training
    keeps its best weights and checkpoint, the run is marked interrupted and can be resumed. Only the main
    thread can install handlers; elsewhere (a server thread calling main) this does nothing."""

    def __enter__(self) -> sigterm_interrupts:
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def interrupted_hint(args: argparse.Namespace) -> str:
    """How to continue what was interrupted (training: --resume), for the one 'interrupted' line."""
    run = getattr(args, "run_dir", None)
    if args.command == "train" and run is not None and (Path(run) / "run.json").is_file():
        return f"; continue with: pawsight train --resume {shown(run)}"
    return ""


def save_traceback() -> Path:
    import tempfile
    import traceback

    fd, name = tempfile.mkstemp(prefix="pawsight-error-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        traceback.print_exc(file=fh)
    return Path(name)


def run_command(args: argparse.Namespace) -> int:
    if args.command == "data":
        if args.data_command == "inspect":
            from .inspect import inspect_command

            return inspect_command(args)
        if args.data_command == "issues":
            from .issues.command import issues_command

            return issues_command(args)
        from .download import download_command

        return download_command(args)
    commands = {"train": train_command, "evaluate": evaluate_command, "cache": cache_command,
                "serve": serve_command, "plot": report_command, "explain": report_command,
                "report": report_command, "compare": compare_command, "advise": advise_command,
                "export": export_command, "predict": predict_command}
    return commands[args.command](args)


def train_command(args: argparse.Namespace) -> int:
    from .api import default_run_dir, train

    params = {param: getattr(args, opt) for opt, param in MODEL_OPTIONS.items()
              if getattr(args, opt) is not None}
    params.update(parse_set_params(args.set_params))
    if args.resume is not None:
        if args.data is None:
            from .run import resume_settings

            root = resume_settings(args.resume)["data"]
            if not root:
                raise PawsightError(f"{args.resume} does not record its data folder; give it: "
                                    f"pawsight train DATA --resume {args.resume}")
            args.data = Path(root)
        args.run_dir = args.resume
        _, info = train(args.data, out=args.resume, resume=True, **params)
    elif args.approach == "auto":
        if args.data is None:
            raise PawsightError("give the data folder: pawsight train DATA --approach auto")
        _, info = auto_train_command(args, params)
    else:
        if args.data is None:
            raise PawsightError("give the data folder: pawsight train DATA [--approach ...]")
        approach = args.approach or "transfer"
        args.run_dir = args.out if args.out is not None else default_run_dir(approach)
        _, info = train(args.data, approach=approach, out=args.run_dir, seed=args.seed,
                        val_fraction=args.val_fraction, drop_duplicates=args.drop_duplicates,
                        overwrite=args.overwrite, exclude=args.exclude, **params)
    if not info:  # a non-zero rank under torchrun: rank 0 reports
        return EXIT_OK
    if args.json:
        print(json.dumps(info, indent=2))
    if info.get("status") == "interrupted":
        # the loop caught Ctrl-C/SIGTERM and kept the best weights so far: usable, but not finished
        print(f"interrupted: {shown(args.run_dir)} holds the best weights so far (predict works); "
              f"continue with: pawsight train --resume {shown(args.run_dir)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.json:
        print_train_summary(info)
        run = shown(args.run_dir)
        print(f"next: pawsight report {run}   (or: pawsight predict {run} PICTURES...)")
    return EXIT_SKIPPED if info["data"]["skipped"] else EXIT_OK


def print_train_summary(info: dict[str, Any]) -> None:
    val = info["metrics"].get("validation")
    counts = info["data"]["counts"]
    sizes = ", ".join(f"{split} {sum(c.values())}" for split, c in counts.items())
    print(f"trained {info['approach']} model on {len(info['classes'])} classes ({sizes} pictures) "
          f"in {info['timings']['total']:.1f} s")
    if val and val["accuracy"] is not None:
        print(f"validation accuracy {val['accuracy']:.2%} on {val['n_images']} pictures "
              f"({val['n_errors']} errors)")
    for s in info["data"].get("ignored", []):
        print(f"warning: not used: {shown(s['path'])}: {shown(s['reason'])}", file=sys.stderr)
    for w in info.get("warnings", []):
        print(f"warning: {shown(w)}", file=sys.stderr)
    skipped = info["data"]["skipped"]
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
        for s in skipped:
            print(f"  {shown(s['path'])}: {shown(s['reason'])}", file=sys.stderr)


def evaluate_command(args: argparse.Namespace) -> int:
    from .api import evaluate
    from .evaluation import unknown_line

    result = evaluate(args.run, args.data, split=args.split, save=not args.no_save, threshold=args.threshold)
    if result.get("save_error"):
        print(f"note: the evaluation was not saved in {args.run} ({result['save_error']})", file=sys.stderr)
    status = EXIT_SKIPPED if result["skipped"] else EXIT_OK  # the same whatever the output format
    if args.json:
        print(json.dumps(result, indent=2))
        return status
    manifest = result.get("selection") == "manifest"
    which = ": the pictures the run validated on, from its manifest" if manifest else ""
    print(f"{shown(result['run'])} on {shown(result['data'])} ({result['split']}{which}): accuracy "
          f"{(result['accuracy'] or 0):.2%} on {result['n_images']} pictures (most probable class)")
    if result.get("threshold") is not None:
        print(unknown_line(result))
    names = [shown(c) for c in result["classes"]]
    columns = [shown(c) for c in result.get("confusion_columns") or result["classes"]]
    width = max(len("class"), *(len(c) for c in names))
    print(f"{'class':<{width}}  precision  recall     f1  support   (of the answers given)")
    for c, m in zip(names, result["per_class"].values(), strict=True):
        print(f"{c:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}")
    print("confusion matrix (rows: true class, columns: answer):")
    cell = max(5, *(len(c) for c in columns))
    print(f"  {'':<{width}}  " + "  ".join(f"{c:>{cell}}" for c in columns))
    for c, row in zip(names, result["confusion_matrix"], strict=True):
        print(f"  {c:<{width}}  " + "  ".join(f"{v:{cell}d}" for v in row))
    for s in result["skipped"]:
        print(f"skipped {shown(s['path'])}: {shown(s['reason'])}", file=sys.stderr)
    if result.get("saved"):
        print(f"saved with one prediction per picture: {shown(result['saved'])}", file=sys.stderr)
    return status


def predict_command(args: argparse.Namespace) -> int:
    from .predict import predict_command as run

    return run(args)


def export_command(args: argparse.Namespace) -> int:
    from .export import PARITY_LIMIT, export_onnx

    result = export_onnx(args.run, args.out)
    print(f"wrote {shown(result['path'])} ({result['bytes'] / 2**20:.1f} MB)")
    print(f"parity with PyTorch on {result['pictures']}: max |Δprobability| = {result['max_abs_diff']:.2e} "
          f"(limit {PARITY_LIMIT:g}), max |Δscore| = {result['max_abs_diff_score']:.2e}")
    return 0


def serve_command(args: argparse.Namespace) -> int:
    try:
        from .serve.app import bind_socket, create_app, make_server
    except ImportError as exc:
        raise PawsightError(f"serving needs the serve extra ({exc.name} is missing): "
                            "pip install 'pawsight[serve]'") from None
    app = create_app(args.run, threshold=args.threshold, max_upload_mb=args.max_upload_mb,
                     max_batch=args.max_batch, workers=args.workers, max_megapixels=args.max_megapixels)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        raise PawsightError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    print(f"serving {shown(args.run)} on http://{shown_host}:{port}/ (API reference: /docs; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    make_server(app, access_log=args.access_log).run(sockets=[sock])
    return 0


def auto_train_command(args: argparse.Namespace, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from .choose import auto_train

    chosen = sorted(k for k in params if k != "time_budget")
    if chosen:
        raise PawsightError(f"--approach auto chooses the model options itself; drop {', '.join(chosen)} "
                            "(or train that approach directly)")
    model, info = auto_train(args.data, args.out, time_budget=params.get("time_budget") or 600.0,
                             seed=args.seed, val_fraction=args.val_fraction,
                             drop_duplicates=args.drop_duplicates, overwrite=args.overwrite,
                             exclude=args.exclude, say=lambda line: print(line, file=sys.stderr))
    if info and not args.json:
        auto = info["auto"]
        print("candidates (cross-validated on the training split):")
        for c in auto["candidates"]:
            score = f"{c['cv_accuracy']:.2%}" if c.get("cv_accuracy") is not None else c.get("status", "")
            print(f"  {c['recipe']:<20} {score}")
        print(f"chosen: {auto['winner']}")
    return model, info


def advise_command(args: argparse.Namespace) -> int:
    from .choose import advise, format_advice

    advice = advise(args.data, args.time_budget, seed=args.seed, val_fraction=args.val_fraction,
                    say=lambda line: print(line, file=sys.stderr))
    print(json.dumps(advice, indent=2) if args.json else format_advice(advice))
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from .choose import CompareRow, compare, format_leaderboard, parse_approaches, parse_sizes

    result = compare(args.data, parse_approaches(args.approaches), parse_sizes(args.sizes),
                     time_budget=args.time_budget, out=args.out, seed=args.seed, overwrite=args.overwrite,
                     say=lambda line: print(line, file=sys.stderr))
    status = EXIT_SKIPPED if result["failed"] else EXIT_OK  # the same whatever the output format
    if args.json:
        print(json.dumps(result, indent=2))
        return status
    print(format_leaderboard([CompareRow(**r) for r in result["rows"]]))
    print(f"compared in {result['seconds']:.0f} s; charts, compare.csv and compare.html in {result['out']}")
    if result["failed"]:
        print(f"warning: {result['failed']} point(s) failed (listed above)", file=sys.stderr)
    return status


def cache_command(args: argparse.Namespace) -> int:
    from .cachedir import CACHE_PARTS, REBUILT, cache_usage, clear_cache

    if args.cache_command == "clear":
        parts = list(CACHE_PARTS) if args.all else (args.parts or list(REBUILT))
        freed = clear_cache(parts)
        print(f"freed {freed / 2**20:.1f} MB ({', '.join(parts)})")
        return 0
    usage = cache_usage()
    if args.json:
        print(json.dumps(usage, indent=2))
        return 0
    print(f"cache folder {shown(usage['root'])}: {usage['bytes'] / 2**20:.1f} MB")
    for part, u in usage["parts"].items():
        note = "" if u["rebuilt_automatically"] else " (download)"
        print(f"  {part:<9} {u['bytes'] / 2**20:9.1f} MB  {u['files']:6d} files  {u['holds']}{note}")
        for key, p in u.get("preprocessings", {}).items():
            print(f"    {key:<40} {p['bytes'] / 2**20:9.1f} MB")
    cap = usage["cap"]
    used, limit = cap["used"] / 2**20, cap["bytes"] / 2**20
    share = 100 * used / max(limit, 1)
    print(f"cap: {' + '.join(cap['covers'])} use {used:.1f} MB of {limit:.0f} MB ({share:.0f}%; "
          f"{cap['setting']} sets it; the least recently used go first)")
    return 0


# -- plot, explain, report (src/pawsight/report/) ---------------------------------------------------------

def add_report_parsers(sub: Any) -> None:
    pl = sub.add_parser("plot", help="draw a run's training curves and evaluation views into RUN/plots/",
                        epilog="Deep-learning runs: loss, accuracy and learning rate per epoch. "
                               "Classical and frozen-transfer runs: the learning curve measured at training "
                               "time. Evaluation views (confusion matrix, per-class scores, ROC/PR, "
                               "calibration, top losses) come from --data, else the run's latest saved "
                               "evaluation, else its validation pictures.")
    pl.add_argument("run", type=Path, help="run directory")
    pl.add_argument("--data", type=Path, default=None, help="labelled pictures to evaluate on")
    pl.add_argument("--split", default=None, help="train, validation, test or all (as for evaluate)")
    ex = sub.add_parser("explain", help="show what the model looked at in one picture")
    ex.add_argument("run", type=Path, help="run directory or exported .onnx file")
    ex.add_argument("image", type=Path, help="picture to explain")
    ex.add_argument("--out", type=Path, default=None,
                    help="PNG to write (default: <image name>.<run name>.<method>.png in the current folder)")
    ex.add_argument("--method", choices=["gradcam", "occlusion", "features"], default=None,
                    help="gradcam (deep runs, default there), occlusion (any run, default for classical), "
                         "features (HOG cells, colour histogram and occlusion)")
    ex.add_argument("--target", default=None,
                    help="class to explain (default: the closest one; the answer itself is always printed)")
    rp = sub.add_parser("report", help="write one self-contained HTML report of a run")
    rp.add_argument("run", type=Path, help="run directory")
    rp.add_argument("--data", type=Path, default=None,
                    help="labelled pictures to evaluate on (default: the run's latest saved evaluation, else "
                         "its validation pictures)")
    rp.add_argument("--out", type=Path, default=None, help="HTML file to write (default: RUN/report.html)")
    # --top-losses, not --top-k: in predict --top-k counts classes (the old spelling still works, unlisted)
    rp.add_argument("--top-losses", "--top-k", dest="top_k", type=cli_type("top_losses", flag="--top-losses"),
                    default=8, metavar="N", help="how many top-loss pictures to show and explain (0-100)")
    rp.add_argument("--no-explain", action="store_true", help="top losses without explanations (faster)")


def report_command(args: argparse.Namespace) -> int:
    if args.command == "plot":
        from .report.plots import load_evaluation, plot_run

        evaluation = load_evaluation(args.run, args.data, args.split)
        for path in plot_run(args.run, evaluation):
            print(shown(path))
        return 0
    if args.command == "explain":
        from .report.explain import explain, render
        from .run import data_root, is_run_dir, read_run_info
        from .storage import PNG_MARKER, atomic_write_bytes, check_output_file

        data = data_root(read_run_info(args.run)) if is_run_dir(args.run) else None
        # the default name holds the run's: explaining one picture with two runs keeps both
        run_name = args.run.resolve().name if args.run.is_dir() else args.run.stem
        early = args.out or (Path(f"{args.image.name}.{run_name}.{args.method}.png") if args.method else None)
        if early is not None:  # checked before the 10-15 s of work, not after
            check_output_file(early, PNG_MARKER, data=data)
        e = explain(args.run, args.image, method=args.method or "auto", target=args.target)
        out = check_output_file(args.out or Path(f"{args.image.name}.{run_name}.{e.method}.png"), PNG_MARKER,
                                data=data)
        atomic_write_bytes(out, render(e), what="the explanation")
        print(f"{shown(args.image)}: {shown(e.caption)} ({e.method}, {e.seconds:.1f} s) -> {shown(out)}")
        return 0
    from .report.html import build_report

    path, seconds = build_report(args.run, args.data, args.out, top_k=args.top_k, explain=not args.no_explain)
    print(f"report written to {shown(path)} ({seconds['total']:.1f} s)")
    return 0
