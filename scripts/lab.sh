#!/usr/bin/env bash
# The main job: install what is needed, then run `meshctl lab` (default: `up`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/meshctl lab "${@:-up}"
