"""Print the requirements of one deployment target, read from pyproject.toml (stdlib only).

The Dockerfile installs these before it copies the code, so that a code change does not
re-install the dependencies: ``python target_requirements.py pyproject.toml t4``.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

SELF_EXTRA = re.compile(r"^\s*(?P<name>[A-Za-z0-9_.-]+)\s*\[(?P<extras>[^\]]+)\]\s*$")


def target_requirements(pyproject: dict, target: str) -> list[str]:
    """The base dependencies plus the target extra's, with ``acestep[a,b]`` references expanded."""
    project = pyproject["project"]
    own = project["name"].lower()
    extras = project.get("optional-dependencies", {})
    if target not in extras:
        raise SystemExit(f"unknown target {target!r}; pyproject.toml has extras: {', '.join(extras)}")
    out: list[str] = []
    seen: set[str] = set()

    def add_extra(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for requirement in extras[name]:
            match = SELF_EXTRA.match(requirement)
            if match and match["name"].lower() == own:
                for inner in match["extras"].split(","):
                    add_extra(inner.strip())
            elif requirement not in out:
                out.append(requirement)

    out.extend(project.get("dependencies", []))
    add_extra(target)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: target_requirements.py PYPROJECT TARGET", file=sys.stderr)
        return 2
    data = tomllib.loads(Path(argv[1]).read_text(encoding="utf-8"))
    print("\n".join(target_requirements(data, argv[2])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
