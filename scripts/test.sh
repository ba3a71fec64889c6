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
# Two workers, each taking whole files (a file's module-scoped server and browser stay on one
# worker); TEST_WORKERS=0 runs in this process. The slowest tests are listed at the end.
workers=${TEST_WORKERS:-2}
parallel=()
if [ "$workers" != "0" ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
"$VENV/bin/python" -m pytest -q "${parallel[@]}" --durations=30 "${order[@]}" "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
