#!/usr/bin/env bash
# Fresh machine -> a generated lego stem with the built-in tiny demo model (no weights, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
"$VENV/bin/acestep" generate --demo --task lego --track-name vocals --seed 7 --batch-size 1 \
  --caption "soulful indie vocalist, warm, wordless melody" --output-dir outputs/demo "$@"
