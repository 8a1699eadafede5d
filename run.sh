#!/usr/bin/env bash
# The two README commands:
#   ./run.sh release   run the whole factory job on the embedded local test cloud
#   ./run.sh test      run the test suite
# Anything else is passed to build.py: ./run.sh matrix --format json
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
command=${1:-release}
shift || true
case "$command" in
  test) exec .venv/bin/python -m pytest "$@" ;;
  *) exec .venv/bin/python build.py "$command" "$@" ;;
esac
