"""The GPU worker process: ``python -m acestep.worker.child --fd N --spec JSON``.

It reads one JSON command per line on stdin and answers on file descriptor N (stdout stays free for
whatever libraries print). Commands: load, generate, unload,
lora_load, lora_unload, status, fault, exit. Every answer
carries the command's id; a generate also streams progress lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TextIO


def _serve(runner, out: TextIO) -> None:
    from acestep.errors import JobError
    from acestep.memory.report import snapshot
    from acestep.request import GenerationRequest
    from acestep.worker.runner import classify

    def send(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    send({"event": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        op, ident = message.get("op"), message.get("id")
        try:
            if op == "generate":
                request = GenerationRequest.model_validate(message["request"])
                result = runner.generate(
                    request,
                    message["output_dir"],
                    lambda stage, fraction, ident=ident: send({"id": ident, "progress": [stage, fraction]}),
                    lm_only=bool(message.get("lm_only")),
                )
                load = runner.take_job_load()
                reply = {"result": result.model_dump(mode="json"), "load": load and load.as_dict()}
            elif op == "load":
                reply = runner.load().as_dict()
            elif op == "unload":
                reply = runner.unload(message["level"]).as_dict()
            elif op == "lora_load":
                reply = runner.load_lora(message["names"]).as_dict()
            elif op == "lora_unload":
                reply = runner.unload_lora(message.get("names")).as_dict()
            elif op == "status":
                reply = {
                    "state": runner.state,
                    "residency": runner.residency(),
                    "adapters": runner.adapters(),
                    "memory": snapshot(runner.source).as_dict(),
                }
            elif op == "fault":
                runner.inject_fault(message["stage"], message["kind"])
                reply = {}
            elif op == "exit":
                runner.unload("free")
                send({"id": ident, "ok": True, "reply": {}})
                return
            else:
                raise JobError("internal", f"unknown worker command {op!r}")
            send({"id": ident, "ok": True, "reply": reply})
        except Exception as exc:  # every failure becomes an answer; the worker keeps serving
            error = classify(exc)
            send({"id": ident, "ok": False, "error": {"kind": error.kind, "message": str(error)}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="acestep-worker-child")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)

    from acestep.memory.gpus import default_source
    from acestep.worker.runner import EngineSpec, InProcessRunner

    out = os.fdopen(args.fd, "w", buffering=1)
    runner = InProcessRunner(EngineSpec(**json.loads(args.spec)), source=default_source())
    _serve(runner, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
