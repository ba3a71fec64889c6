"""Shared by the benchmark scripts (run as ``python bench/NAME.py``, so this folder is on sys.path)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` when tracked files are modified), if git is there."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def write_report(report: dict, path: str | Path) -> None:
    """Write a benchmark's JSON result and echo it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def machine_facts() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        info["mem_total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        pass
    return info


def contention() -> dict:
    """Load average and CPU pressure (PSI "some" = share of time a runnable task waited for a CPU).

    The figures are only comparable between runs on an otherwise idle machine; these say how idle it was.
    """
    out: dict = {"load_avg": [round(x, 2) for x in os.getloadavg()]}
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()[1:]
        out["cpu_pressure_some_pct"] = {k: float(v) for k, v in (f.split("=") for f in some) if k != "total"}
    except (OSError, IndexError, ValueError):
        pass
    return out


def save_and_summarise(report: dict, out: Path, table: str) -> None:
    """Write ``report`` as JSON to ``out``, print ``table`` and one line on wall time and how busy
    the machine was (``report`` carries ``bench_wall_s`` and ``contention_start``/``_end``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    before, after = report["contention_start"], report["contention_end"]
    print(
        f"\nwall {report['bench_wall_s']:.0f} s; load average {before['load_avg']} -> {after['load_avg']}; "
        f"CPU pressure {before.get('cpu_pressure_some_pct')} -> {after.get('cpu_pressure_some_pct')}; "
        f"JSON: {out}"
    )
