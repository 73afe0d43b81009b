#!/usr/bin/env bash
# Install the visdom plotting client/server (optional: training runs without it, see docs/VISDOM.md).
#
# Why a script:
# 1. visdom 0.2.4 is the newest release for Python < 3.12 (0.3.0 requires Python >= 3.12) and is published only as
#    a source archive whose setup.py imports `pkg_resources`. setuptools >= 81 no longer ships pkg_resources, and pip
#    builds source archives in an isolated environment with the newest setuptools, so a plain `pip install visdom`
#    fails with "ModuleNotFoundError: No module named 'pkg_resources'". This script caps setuptools in that isolated
#    build environment only (the environment you install into keeps its own setuptools):
#      pip >= 25.3: --build-constraint FILE
#      older pip:   PIP_CONSTRAINT=FILE (older pip applies it to the isolated build environment too)
# 2. tornado < 6.6: tornado 6.6 refuses static_url("../user/style.css"), which visdom 0.2.4's page template uses,
#    so the web page answers "403 Forbidden" (the plotting API still works). tornado 6.5.x renders it.
#
# Usage: scripts/install_visdom.sh            (uses `python`)
#        PYTHON=/path/to/venv/bin/python scripts/install_visdom.sh
# Idempotent: does nothing when visdom $VISDOM_VERSION and tornado < 6.6 are already importable.
set -euo pipefail

PY="${PYTHON:-python}"
VISDOM_VERSION="${VISDOM_VERSION:-0.2.4}"
SETUPTOOLS_CAP="${SETUPTOOLS_CAP:-setuptools<81}"
TORNADO_PIN="${TORNADO_PIN:-tornado<6.6}"

check_py='
import sys, importlib.metadata as md
try:
    import tornado, visdom  # noqa: F401
except ImportError:
    sys.exit(1)
sys.exit(0 if md.version("visdom") == sys.argv[1] and tornado.version_info < (6, 6) else 1)
'
if "$PY" -c "$check_py" "$VISDOM_VERSION" 2>/dev/null; then
    echo "visdom $VISDOM_VERSION (with tornado < 6.6) is already installed for $PY"
    exit 0
fi

tmpdir="$(mktemp -d)"
trap 'rm -rf "$tmpdir"' EXIT
constraints="$tmpdir/build-constraints.txt"
printf '%s\n' "$SETUPTOOLS_CAP" > "$constraints"

if "$PY" -m pip install --help 2>/dev/null | grep -q -- '--build-constraint'; then
    echo "installing visdom==$VISDOM_VERSION $TORNADO_PIN (build with --build-constraint: $SETUPTOOLS_CAP)"
    "$PY" -m pip install --build-constraint "$constraints" "visdom==$VISDOM_VERSION" "$TORNADO_PIN"
else
    echo "installing visdom==$VISDOM_VERSION $TORNADO_PIN (build with PIP_CONSTRAINT: $SETUPTOOLS_CAP)"
    PIP_CONSTRAINT="$constraints" "$PY" -m pip install "visdom==$VISDOM_VERSION" "$TORNADO_PIN"
fi

"$PY" -c "$check_py" "$VISDOM_VERSION"
"$PY" -c 'import importlib.metadata as md, tornado, visdom
print("visdom", md.version("visdom"), "tornado", tornado.version, "OK:", visdom.__file__)'
