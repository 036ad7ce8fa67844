#!/usr/bin/env bash
# Install everything and run the demo: an embedded controller with several
# local endpoints, a shortest-ping run to targets on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/marionet demo "$@"
