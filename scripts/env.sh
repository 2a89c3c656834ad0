#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with every pinned dependency.
# Needs only Python 3.11+, pip and the package registries. Safe to run again: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
# torch==2.13.0 is pinned in pyproject.toml; on CPU machines pip takes the local CPU wheel.
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -m pip check
