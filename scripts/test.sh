#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite (kernel tests included: run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
