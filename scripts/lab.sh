#!/usr/bin/env bash
# The main job: install what is needed, then run `meshctl lab` (default: `up`).
set -euo pipefail
cd "$(dirname "$0")/.."
MESHSEC_EXTRAS=${MESHSEC_EXTRAS:-dev} bash scripts/install.sh
exec .venv/bin/meshctl lab "${@:-up}"
