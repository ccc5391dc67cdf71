#!/usr/bin/env bash
# The test command of the README (after set-up): the Python test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pytest -q tests "$@"
