#!/usr/bin/env bash
# Creates (or updates) the Python virtual environment that capstan's client-compatibility tests
# use, at $CAPSTAN_VENV (default /var/tmp/capstan-venv). Idempotent: a second run only checks
# that the pinned packages are present.
#
# Pinned: the mlflow client that tests/python/ checks wire compatibility against.
set -euo pipefail
VENV="${CAPSTAN_VENV:-/var/tmp/capstan-venv}"
PACKAGES=(
  "mlflow==3.17.2"
  "scikit-learn"
  "pytest"
  # The kfp SDK: tests/kfp.rs compiles examples/kfp/pipelines.py with it, and the Python
  # components of those pipelines run kfp's executor. The version the examples were compiled with.
  "kfp==2.17.3"
  # The browser suite (tests/ui/) drives Debian's chromium with it; it never downloads a browser.
  "playwright==1.65.2"
  # A local Ray head (scripts/ray-head.sh) for the Ray executor's tests, and the S3-compatible
  # server (moto_server) for the artifact store's S3 tests.
  "ray[default]==2.60.0"
  "moto[server]==5.2.5"
)

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("mlflow") != "3.17.2")' 2>/dev/null \
  && "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("ray") != "2.60.0" or m.version("moto") != "5.2.5")' 2>/dev/null \
  && "$VENV/bin/python" -c 'import sklearn, pytest, kfp, playwright' 2>/dev/null; then
  exit 0
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
