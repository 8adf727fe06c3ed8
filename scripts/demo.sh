#!/usr/bin/env bash
# The main job on a built-in example: start a sample workload in a new pid namespace, dump it
# with --kill, show the image summary, restore it (see `ckptrace demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/ckptrace demo "$@"
