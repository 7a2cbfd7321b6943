#!/usr/bin/env bash
# The project's test command (README, .ci/run): a fresh virtual environment, the package with its test extras, then
# pytest on two xdist workers. Safe to re-run; reuses .venv when it is there. Arguments go to pytest:
#   bash scripts/test.sh -m "not slow"    the fast tier (the development loop)
#   bash scripts/test.sh -n 0 tests/cli   serially, one folder
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet -e ".[test,diffusers]" -c .ci/constraints.txt
# System packages for the slow tier: PostgreSQL binaries for the distributed tests (the tests start their own server)
# and chromium + chromedriver for tests/export/test_browser.py. Under CI (CI=true; .ci/run sets it) a failed install
# stops the run, and those tests fail instead of skipping; elsewhere they skip and say why.
for setup in scripts/ci_postgres.sh scripts/ci_browser.sh; do
    if ! bash "$setup"; then
        case "${CI:-}" in
            [Tt][Rr][Uu][Ee] | 1 | [Yy][Ee][Ss]) echo "test.sh: $setup failed (CI=$CI)" >&2; exit 1 ;;
        esac
        echo "test.sh: $setup failed; the tests that need it will skip (CI would fail here)" >&2
    fi
done
# Lint with the project's config (pyproject.toml [tool.ruff]) before the tests.
.venv/bin/ruff check .
# Two workers (this project's CI machine has 2 cores): whole test files per worker (--dist loadfile), so a module's
# expensive fixture (a study, a server, a Ray runtime) is built once; every server, database and Ray runtime a test
# starts takes a free port and a private temporary folder, so the two workers do not collide. -n/--dist given in
# the arguments win (-n 0: one process, no xdist); SKIPSEARCH_TEST_WORKERS=N sets the default.
exec .venv/bin/python -m pytest -q -n "${SKIPSEARCH_TEST_WORKERS:-2}" --dist loadfile "$@"
