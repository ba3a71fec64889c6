#!/usr/bin/env bash
# Fresh machine -> a lego stem from the built-in tiny demo model (no weights; nothing but pip online).
# Installs only what generation needs into ./.venv (VENV=... for another folder): no test tools,
# no system packages. Extra arguments go to `acestep generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
OUT=outputs/demo/demo-lego-vocals.wav
started=$SECONDS

step() { printf '==> %s\n' "$*"; }

# Runs "$@" quietly, printing a line every 20 s so that a long download is never a silent minute.
with_heartbeat() {
  local label=$1 log
  shift
  log=$(mktemp)
  "$@" >"$log" 2>&1 &
  local pid=$! waited=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    waited=$((waited + 1))
    if [ $((waited % 20)) -eq 0 ]; then printf '    ... still %s (%d s)\n' "$label" "$waited"; fi
  done
  if ! wait "$pid"; then
    cat "$log" >&2
    rm -f "$log"
    printf 'error: %s failed (pip output above)\n' "$label" >&2
    return 1
  fi
  rm -f "$log"
}

if [ ! -x "$VENV/bin/python" ]; then
  step "creating the virtual environment $VENV"
  python3 -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
if "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
  step "torch is already in $VENV"
else
  # torch first and pinned, so that no dependency resolves another multi-GB build.
  step "installing torch 2.14.1 (the largest part: a few minutes on a fresh machine)"
  with_heartbeat "installing torch" "${pip[@]}" torch==2.14.1
fi
step "installing acestep and what it needs to generate (no extras)"
with_heartbeat "installing acestep" "${pip[@]}" -e .
step "generating a vocals stem (lego) for a synthetic song with the built-in demo model"
"$VENV/bin/acestep" generate --demo --task lego --track-name vocals --seed 7 --batch-size 1 \
  --caption "soulful indie vocalist, warm, wordless melody" -o "$OUT" "$@"
step "done in $((SECONDS - started)) s; the commands are in $VENV/bin (or: source $VENV/bin/activate)"
