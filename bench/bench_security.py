"""What hostile requests cost a real ``acestep-api`` (issue 19): memory for a refused body, and how
long stalled connections are held.

Starts the real server (``acestep-api``, a key set, default limits) on a tiny random checkpoint and
measures, from /proc, the API process's resident memory around each refused body, and the seconds
until the server drops a connection that stalls in its headers, in its body, or never speaks.
``--repo`` runs the server from another checkout (e.g. the code before the fix) for comparison;
stalls are given up on after ``--give-up`` seconds.

    python bench/bench_security.py [--repo /path/to/checkout] [--json bench/results/security.json]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import git_commit, write_report

from acestep.testing import make_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tests' raw-socket client, shared
from _raw_http import held_for  # noqa: E402

KEY = "bench-key-0123456789abcdef"
MiB = 2**20


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(repo: Path, checkpoint: Path, workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = os.environ | {
        "PYTHONPATH": str(repo), "ACESTEP_CHECKPOINTS_DIR": str(checkpoint),
        "ACESTEP_CONFIG_PATH": "acestep-v15-base", "ACESTEP_DEVICE": "cpu",
        "ACESTEP_TMPDIR": str(workdir / "tmp"), "ACESTEP_API_KEY": KEY, "NO_PROXY": "127.0.0.1",
    }  # fmt: skip
    code = "from acestep.cli import api_main; raise SystemExit(api_main())"
    log = (workdir / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port)],
        env=env,
        cwd=repo,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False).status_code == 200:
                return proc, port
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def send_body(port: int, headers: dict, size: int) -> dict:
    """Stream ``size`` bytes after ``headers`` until done or the server closes; the status and
    how much was sent."""
    lines = ["POST /release_task HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {size}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sent, status = 0, None
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunk = b" " * MiB
        try:
            while sent < size:
                sock.sendall(chunk[: min(MiB, size - sent)])
                sent += min(MiB, size - sent)
        except OSError:
            pass
        try:
            answer = sock.recv(4096)
            status = int(answer.split(b" ", 2)[1]) if answer else None
        except OSError:
            pass
    return {"status": status, "sent_mib": round(sent / MiB, 1)}


def refused_body(pid: int, port: int, name: str, headers: dict, size: int) -> dict:
    before = rss_mib(pid)
    outcome = send_body(port, headers, size)
    time.sleep(0.5)
    after = rss_mib(pid)
    return {
        "case": name, "body_mib": size // MiB, **outcome, "rss_before_mib": round(before[0], 1),
        "rss_after_mib": round(after[0], 1), "peak_growth_mib": round(after[1] - before[1], 1),
    }  # fmt: skip


def held(port: int, opening: bytes, give_up: float) -> float:
    """Seconds until the server closes a connection that sent ``opening`` and then nothing."""
    with socket.create_connection(("127.0.0.1", port), timeout=give_up) as sock:
        sock.sendall(opening)
        return round(held_for(sock, give_up), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--give-up", type=float, default=90.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checkpoint = make_tiny_checkpoint(workdir / "checkpoints", variant="base")
        proc, port = start(args.repo.resolve(), checkpoint, workdir)
        try:
            json_type, keyed = {"Content-Type": "application/json"}, {"Authorization": f"Bearer {KEY}"}
            cases = {
                "190 MiB JSON, no key": json_type,
                "190 MiB JSON, key in header": json_type | keyed,
                "190 MiB multipart, no key": {"Content-Type": "multipart/form-data; boundary=b"},
            }
            bodies = [
                refused_body(proc.pid, port, name, headers, 190 * MiB) for name, headers in cases.items()
            ]
            head = f"POST /release_task HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            body_head = head + f"Authorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n{{"
            stalls = {
                "silent connection": held(port, b"", args.give_up),
                "headers unfinished": held(port, head.encode(), args.give_up),
                "body stalled": held(port, body_head.encode(), args.give_up),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    report = {
        "commit": git_commit(), "repo": str(args.repo), "refused_bodies": bodies, "stall_held_s": stalls,
        "give_up_s": args.give_up,
    }  # fmt: skip
    for row in bodies:
        print(row)
    print("stalled connections held (s):", stalls)
    if args.json:
        write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
