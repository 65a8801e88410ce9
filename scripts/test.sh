#!/usr/bin/env bash
# The whole test suite, as CI runs it: install, check generated code, lint, type-check, build the
# image offline (cached; its size goes to the log), test, a bounded fuzz pass (docs/reliability.md),
# then the kernel lane (ESP on a real kernel under qemu).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== generated protobuf code is current"
bash .ci/gen-proto --check
echo "== ruff"
ruff check .
echo "== mypy (strict)"
PYTHON="$PWD/.venv/bin/python" bash .ci/typecheck
echo "== image (scripts/build-image.sh: offline, cached under /var/cache/meshsec)"
image_started=$SECONDS
image=$(bash scripts/build-image.sh | tail -n 1)
echo "image: $image, ready in $((SECONDS - image_started)) s"
echo "== pytest"
python -m pytest -q -p no:cacheprovider --durations=30 "$@"
echo "== fuzz (bounded)"
bash .ci/fuzz --seconds "${MESHSEC_FUZZ_SECONDS:-20}"
if [ -x .ci/kernel-lane ]; then
    echo "== kernel lane (qemu, ESP-capable kernel)"
    bash .ci/kernel-lane --venv "$PWD/.venv"
fi
