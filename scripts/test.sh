#!/usr/bin/env bash
# Install everything and run the whole test suite. Tests that need root
# (network namespaces, raw sockets) run when this runs as root and are
# skipped, with a notice, otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -ra "$@"
