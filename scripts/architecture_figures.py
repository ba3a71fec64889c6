"""The architecture figures issue 20 asks for, computed the same way before and after.

    python scripts/architecture_figures.py [--root DIR]

Prints JSON: upward imports against the layer contract in pyproject.toml (``[tool.importlinter]``;
the declared exceptions counted apart), package pairs that import each other, lines of
``serving/params.py``, modules that read the environment, lines that state the request duration
bounds (10 s and 600 s), and the largest function. ``--root`` measures another checkout (an older
commit in a worktree) with this checkout's contract.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import tomllib
from pathlib import Path

import grimp

HERE = Path(__file__).resolve().parents[1]
# A read of the environment: get/getenv/copy, a lookup that is not an assignment, a membership
# test, or the mapping itself passed on (``os.environ if env is None``). Writes do not count.
ENV_READ = re.compile(
    r"os\.environ\.(get|copy|items|keys)\b|getenv\(|os\.environ\[[^\]]+\](?!\s*=[^=])"
    r"|in os\.environ|os\.environ\s*(\||if\b|\)|,|$)|dict\(os\.environ\)"
)
# A duration bound: the literal 10 or 600 (s) on a line that speaks of a duration (a histogram's
# buckets are not a bound).
BOUND = re.compile(r"(?<![\w.])(10|600)(\.0)?(?![\w.])")


def layer_contract() -> dict:
    config = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["importlinter"]
    return next(c for c in config["contracts"] if c["type"] == "layers")


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    for index, layer in enumerate(layers):
        for name in layer:
            if module == name or module.startswith(name + "."):
                return index
    return None


def upward_imports(graph, contract: dict) -> tuple[int, int]:
    # import-linter lists layers top first; index 0 here is the bottom.
    layers = [re.split(r"\s*[|:]\s*", entry) for entry in reversed(contract["layers"])]
    root = contract.get("containers", ["acestep"])[0]
    layers = [[f"{root}.{name}" for name in layer] for layer in layers]
    declared = {tuple(s.strip() for s in line.split("->")) for line in contract.get("ignore_imports", [])}
    total = exempt = 0
    for module in graph.modules:
        low = layer_of(module, layers)
        if low is None:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            high = layer_of(imported, layers)
            if high is not None and high > low:
                total += 1
                exempt += (module, imported) in declared
    return total, exempt


def mutual_pairs(graph) -> list[str]:
    package = lambda name: ".".join(name.split(".")[:2])  # noqa: E731
    edges = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if package(module) != package(imported):
                edges.add((package(module), package(imported)))
    return sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b)


def largest_function(source_root: Path) -> tuple[str, int]:
    best = ("", 0)
    for path in sorted(source_root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > best[1]:
                    best = (f"{path.relative_to(source_root.parent)}:{node.name}", length)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE)
    root = parser.parse_args().root.resolve()
    sys.path.insert(0, str(root))
    graph = grimp.build_graph("acestep", cache_dir=None)
    source = root / "acestep"
    files = sorted(source.rglob("*.py"))
    upward, exempt = upward_imports(graph, layer_contract())
    bound_lines = [
        f"{path.relative_to(root)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "duration" in line.lower() and "BUCKETS" not in line and BOUND.search(line.split("#")[0])
    ]
    params = source / "serving" / "params.py"
    name, length = largest_function(source)
    print(json.dumps({
        "upward_imports": upward,
        "upward_imports_declared_exceptions": exempt,
        "mutually_importing_package_pairs": mutual_pairs(graph),
        "serving_params_lines": len(params.read_text().splitlines()) if params.exists() else 0,
        "modules_reading_environment": [
            str(p.relative_to(root)) for p in files if ENV_READ.search(p.read_text())
        ],
        "duration_bound_lines": bound_lines,
        "largest_function": {"name": name, "lines": length},
    }, indent=1))


if __name__ == "__main__":
    main()
