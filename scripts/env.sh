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
# checkov (k8s pod-security / RBAC checks in tests/pipelines/test_k8s_policy.py) pins versions the project cannot
# share (boto3, packaging, networkx): it gets its own environment, every dependency pinned in the requirements file.
[ -x .venv/checkov/bin/python ] || "$PY" -m venv .venv/checkov
.venv/checkov/bin/python -m pip install --quiet -r k8s/policy/checkov-requirements.txt
.venv/checkov/bin/python -m pip check
