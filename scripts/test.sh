#!/usr/bin/env bash
# Install (idempotent) and run the test suite in a random order (pytest-randomly). Extra arguments
# go to pytest: `--randomly-seed=N` replays an order, `-p no:randomly` keeps the file order.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
bash scripts/setup.sh || exit 1
VENV=${VENV:-.venv}
order=()
case " $* " in
  *no:randomly* | *--randomly-seed*) ;;
  *)
    seed=$(( (RANDOM << 15) | RANDOM ))
    order=(--randomly-seed="$seed")
    echo "test order: random, seed $seed (replay: bash scripts/test.sh --randomly-seed=$seed)"
    ;;
esac
"$VENV/bin/python" -m pytest -q "${order[@]}" "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
