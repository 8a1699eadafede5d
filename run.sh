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
  # Tests that boot guests run one after another on one worker, the rest beside them (tests/conftest.py);
  # FLOWER_TEST_WORKERS=0 runs everything in this process.
  test) exec .venv/bin/python -m pytest -n "${FLOWER_TEST_WORKERS:-2}" --dist loadgroup "$@" ;;
  *) exec .venv/bin/python build.py "$command" "$@" ;;
esac
