#!/usr/bin/env bash
# The README's test command: installs what is missing, then runs the whole test suite on CPU.
# Arguments other than --help go to pytest, e.g. `bash scripts/run_tests.sh tests/test_tiling.py -x`.
set -euo pipefail
case "${1:-}" in -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;; esac
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" -m pytest tests "$@"
