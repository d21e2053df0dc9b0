#!/bin/sh
# The whole job on a sandbox, in under a minute: a throwaway influxd with sample data, a cold
# backup with its downtime measured, a restore into a second throwaway server, then clean-up.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec "${PYTHON:-python3}" scripts/demo.py "$@"
