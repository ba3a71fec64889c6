"""``python -m acestep.cli`` is the ``acestep`` script (the CLI tests run it this way)."""

from acestep.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
