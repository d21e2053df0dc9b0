#!/bin/sh
# The whole test suite, from a fresh Debian machine: installs what it needs, then lint, types, tests.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
PYTHON="${PYTHON:-python3}"
echo "== ruff" >&2
lint="src tests scripts"
[ -d bench ] && lint="$lint bench"
"$PYTHON" -m ruff check $lint
"$PYTHON" -m ruff format --check $lint
echo "== mypy --strict src" >&2
"$PYTHON" -m mypy --strict src
echo "== lint-imports (the layers contract in pyproject.toml)" >&2
"$PYTHON" -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
# Side by side: most of the suite waits on influxd starting, stopping and copying, and the
# CLI's calls fork from a pre-imported server (tests/cli_process.py), so five workers fill two
# cores (three did while every call started an interpreter: two thirds of the suite's CPU).
# Tests of a module with a shared fixture stay on one worker (tests/conftest.py).
# TEST_WORKERS=0 runs them one after another.
# The suite writes archives of a GB or more side by side (some 5 GB at its peak; a passing
# test's tmp dir is removed as it ends): say so up front on a nearly full disk, not as 300
# errors half an hour later.
tmp="${TMPDIR:-/tmp}"
free_kib=$(df -Pk "$tmp" | awk 'NR == 2 { print $4 }')
if [ "${free_kib:-0}" -lt $((8 * 1024 * 1024)) ]; then
    echo "test.sh: warning: only $((free_kib / 1024)) MiB free in $tmp; the suite needs some 8 GiB" >&2
fi
# Our modules compiled once, up front: where PYTHONDONTWRITEBYTECODE is set (this CI machine
# sets it) every CLI process a test starts would compile them again, about 0.3 CPU s each.
"$PYTHON" -m compileall -q src >/dev/null
echo "== pytest (${TEST_WORKERS:-5} workers)" >&2
"$PYTHON" -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-5}" --dist loadgroup "$@"
