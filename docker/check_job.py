"""One end-to-end job against a running acestep server, for docker/smoke.sh and docker/verify.sh.

Standard library only, so it runs inside the image (``docker exec -i NAME python - < check_job.py``)
or on the host. It checks /health, runs one short generation (``lego``: a synthetic track uploaded
to POST /lego; ``text2music``: /release_task + /query_result), frees the model with POST /unload,
and prints a JSON summary. Exit 1 with the reason when a step fails.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import struct
import sys
import time
import urllib.error
import urllib.request
import uuid
import wave


def call(url: str, key: str, body: bytes | None = None, content_type: str = "application/json"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if body is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=900) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None


def synthetic_track(seconds: float, rate: int = 48000) -> bytes:
    """A stereo 16-bit WAV: a 110 Hz tone with a pulse every half second (a stand-in for a mix)."""
    frames = bytearray()
    for n in range(int(seconds * rate)):
        t = n / rate
        pulse = 0.3 if (t % 0.5) < 0.02 else 0.0
        sample = int(32767 * (0.3 * math.sin(2 * math.pi * 110 * t) + pulse))
        frames += struct.pack("<hh", sample, sample)
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(frames))
    return out.getvalue()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(f"{head}{value}\r\n".encode())
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def wait_healthy(base: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                payload = json.loads(response.read())
                return payload.get("data", payload)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise SystemExit(f"{base}/health did not answer within {timeout:.0f} s") from None
            time.sleep(1)


def run_lego(base: str, key: str, seconds: float) -> dict:
    body, content_type = multipart(
        {"track_type": "drums", "bpm": "120", "seed": "7", "response": "json"},
        {"audio_file": ("track.wav", synthetic_track(seconds))},
    )
    _, _, payload = call(f"{base}/lego", key, body, content_type)
    return json.loads(payload)["data"]


def run_text2music(base: str, key: str, seconds: float) -> dict:
    request = {
        "caption": "warm piano, soft drums",
        "lyrics": "[verse]\nla la la",
        "audio_duration": seconds,
        "seed": 7,
        "batch_size": 1,
        "audio_format": "wav",
    }
    _, _, payload = call(f"{base}/release_task", key, json.dumps(request).encode())
    task_id = json.loads(payload)["data"]["task_id"]
    while True:
        _, _, payload = call(f"{base}/query_result", key, json.dumps({"task_id_list": [task_id]}).encode())
        entry = json.loads(payload)["data"][0]
        if entry["status"] == 1:
            return {"task_id": task_id, "items": json.loads(entry["result"])}
        if entry["status"] != 0:
            raise SystemExit(f"task {task_id} failed: {entry}")
        time.sleep(0.5)


def wait_for_free(base: str, key: str, timeout: float) -> dict:
    """The memory status once the worker process has gone (its GPU memory with it)."""
    deadline = time.monotonic() + timeout
    while True:
        _, _, payload = call(f"{base}/v1/memory", key)
        status = json.loads(payload)["data"]
        if status["worker"]["pid"] is None:
            return status
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker still runs {timeout:.0f} s after the job: {status['worker']}")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8001")
    parser.add_argument("--key", default="")
    parser.add_argument("--task", choices=("lego", "text2music"), default="lego")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--health-timeout", type=float, default=300.0)
    parser.add_argument("--expect-free-after-job", action="store_true", help="fail unless keep-alive 0 frees")
    args = parser.parse_args()
    summary = {"health": wait_healthy(args.url, args.health_timeout)}
    started = time.perf_counter()
    run = run_lego if args.task == "lego" else run_text2music
    summary["job"] = run(args.url, args.key, args.seconds)
    summary["job_seconds"] = round(time.perf_counter() - started, 2)
    if args.expect_free_after_job:  # ACESTEP_KEEP_ALIVE=0: the worker exits right after the job
        summary["memory_after_job"] = wait_for_free(args.url, args.key, timeout=30)
    _, _, payload = call(f"{args.url}/unload", args.key, json.dumps({"level": "free"}).encode())
    summary["unload"] = json.loads(payload)["data"]
    _, _, payload = call(f"{args.url}/v1/memory", args.key)
    summary["memory_after_unload"] = json.loads(payload)["data"]
    json.dump(summary, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
