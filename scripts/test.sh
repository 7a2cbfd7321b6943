#!/usr/bin/env bash
# The project's test command (README, .ci/run): a fresh virtual environment, the package with its test extras, then
# pytest. Safe to re-run; reuses .venv when it is there.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet -e ".[test,diffusers]" -c .ci/constraints.txt
# PostgreSQL binaries for the distributed tests (Debian's package when missing; the tests start their own server).
bash scripts/ci_postgres.sh
bash scripts/ci_browser.sh  # chromium + chromedriver for tests/export/test_browser.py (skipped without them)
# Lint with the project's config (pyproject.toml [tool.ruff]) before the tests.
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
