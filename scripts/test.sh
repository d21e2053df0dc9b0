#!/bin/sh
# The whole test suite, from a fresh Debian machine: installs what it needs, then lint, types, tests.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
PYTHON="${PYTHON:-python3}"
echo "== ruff" >&2
"$PYTHON" -m ruff check src tests bench scripts
"$PYTHON" -m ruff format --check src tests bench scripts
echo "== mypy --strict src" >&2
"$PYTHON" -m mypy --strict src
echo "== pytest" >&2
"$PYTHON" -m pytest -q -p no:cacheprovider "$@"
