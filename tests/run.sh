#!/usr/bin/env bash
# The test command: installs what the tests need, then runs them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
python -m pytest -q "$@"
