"""``python -m bench run ...`` (one speed case to JSON) and ``python -m bench report`` (JSON to tables)."""

from __future__ import annotations

import sys

USAGE = "usage: python -m bench {run,report} [options]   (python -m bench run --help for the options)"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("run", "report"):
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        from bench.speed.run import main as run

        return run(rest)
    from bench.speed.report import main as report

    return report(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
