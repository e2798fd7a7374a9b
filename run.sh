#!/usr/bin/env bash
# pawsight's one entry point for newcomers and CI.
#   ./run.sh demo [--data DIR]   set up, then download (or use DIR), inspect, train, evaluate, predict
#   ./run.sh test [PYTEST ARGS]  set up, then lint, build the docs and run the tests (one worker per core;
#                                -m "not slow" for the quick edit-loop tier)
#   ./run.sh bench [NAME]        set up, then run benchmarks/ (prints tables)
#   ./run.sh notebook            set up (+ JupyterLab, once), then open the lesson notebook
#   ./run.sh setup               only create/refresh the environment in .venv
# Set-up is skipped when .venv already matches pyproject.toml, so re-runs start at once.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${PAWSIGHT_VENV:-.venv}"

find_python() {
  for py in python3.11 python3.12 python3.13 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  echo "pawsight needs Python 3.11 or newer (python3.11 recommended: PyTorch wheels exist for it)" >&2
  return 1
}

setup() {
  local stamp
  stamp="$( (cat pyproject.toml; echo "setup-v2") | sha256sum | cut -c1-16)"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.pawsight-stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    local py
    py="$(find_python)"
    echo "setting up $VENV (first run takes a few minutes: PyTorch is large)" >&2
    "$py" -m venv "$VENV"
  else
    echo "updating $VENV: pyproject.toml changed" >&2
  fi
  # PAWSIGHT_PIP_ARGS lets users add e.g. "--extra-index-url https://download.pytorch.org/whl/cpu".
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ${PAWSIGHT_PIP_ARGS:-} -e ".[dev]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$stamp" > "$VENV/.pawsight-stamp"
}

ensure_chromium() {
  # The browser tests drive the system's Chromium with Playwright; a browser is never downloaded.
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "note: no chromium found; browser tests will be skipped (install your distribution's chromium)" >&2
  fi
}

demo() {
  local data="" out="${PAWSIGHT_RUNS:-runs}"
  while [ $# -gt 0 ]; do
    case "$1" in
      --data) data="$2"; shift 2 ;;
      --data=*) data="${1#--data=}"; shift ;;
      --out) out="$2"; shift 2 ;;
      *) echo "unknown option for demo: $1" >&2; exit 2 ;;
    esac
  done
  local ps="$VENV/bin/pawsight"
  # exit status 1 = done, some unreadable files skipped (each named): the demo goes on
  tolerant() { "$@" || [ $? -eq 1 ]; }
  if [ -z "$data" ]; then
    if ! data="$("$ps" data download cats-vs-dogs --print-path)"; then
      echo "could not download the Cats vs Dogs pictures; offline, point the demo at a folder you have:" >&2
      echo "  ./run.sh demo --data DIR    (DIR holds one sub-folder of pictures per class)" >&2
      exit 1
    fi
  fi
  echo "== 1. inspect the data: $data"
  "$ps" data inspect "$data" --sheet "$out/contact-sheet.png"
  echo "== 2. classical machine learning: hand-made features + SVM"
  tolerant "$ps" train "$data" --approach classical --out "$out/demo-classical" --overwrite
  echo "== 3. deep learning: transfer learning from EfficientNet-Lite0 (ImageNet weights, installed locally)"
  tolerant "$ps" train "$data" --approach transfer --out "$out/demo-transfer" --overwrite
  echo "== 4. evaluate both on the validation pictures"
  tolerant "$ps" evaluate "$out/demo-classical" "$data"
  tolerant "$ps" evaluate "$out/demo-transfer" "$data"
  echo "== 5. predict pictures the model did not train on"
  local samples unseen="$data"
  for split in test validation; do [ -d "$data/$split" ] && { unseen="$data/$split"; break; }; done
  [ "$unseen" = "$data" ] && echo "(no test/ or validation/ folder: these may include training pictures)"
  samples="$(find "$unseen" -type f \( -iname '*.jpg' -o -iname '*.png' \) | sort | sed -n '1,2p;$p')"
  # shellcheck disable=SC2086
  tolerant "$ps" predict "$out/demo-transfer" $samples --top-k 2
  echo "== 6. the report: curves, confusion matrix, errors, unknowns, what the model looked at"
  "$ps" report "$out/demo-transfer"
  echo "== done: open $out/demo-transfer/report.html in a browser; run directories are in $out/"
}

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  demo) setup; demo "$@" ;;
  test)
    setup
    ensure_chromium
    "$VENV/bin/ruff" check src tests benchmarks notebooks
    # The documentation site must build without a warning (broken link, missing page), into a temporary
    # folder, never the repository. Not --quiet: it hides warnings from --strict too (mkdocs issue #4126),
    # so the output is kept and shown only when the build fails.
    site="$(mktemp -d)"
    if ! docs_log="$(NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --site-dir "$site" 2>&1)"; then
      grep -v '^INFO' <<<"$docs_log" >&2; rm -rf "$site"; exit 1
    fi
    rm -rf "$site"
    # one pytest worker per core (pytest-xdist) unless the caller chose (-n N, -p no:xdist); loadgroup keeps
    # the tests of one xdist_group (the Ray cluster's) on one worker
    parallel=(-n auto --dist loadgroup)
    for arg in "$@"; do
      case "$arg" in -n|-n[0-9]*|--numprocesses*|no:xdist) parallel=() ;; esac
    done
    "$VENV/bin/python" -m pytest -q "${parallel[@]}" "$@"
    ;;
  bench) setup; "$VENV/bin/python" benchmarks/run.py "$@" ;;
  notebook)
    setup
    if ! "$VENV/bin/python" -c "import jupyterlab" 2>/dev/null; then
      echo "installing JupyterLab into $VENV (once)" >&2
      # shellcheck disable=SC2086
      "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ${PAWSIGHT_PIP_ARGS:-} -e ".[dev,lab]" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    fi
    # Jupyter refuses to run as root unless told (containers often run as root).
    if [ "$(id -u)" = 0 ]; then set -- --allow-root "$@"; fi
    exec "$VENV/bin/python" -m jupyterlab notebooks/image-recognition.ipynb "$@"
    ;;
  *) sed -n '2,8p' "$0"; [ "$cmd" = help ] ;;
esac
