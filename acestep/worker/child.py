"""The GPU worker process: ``python -m acestep.worker.child --fd N --spec JSON``.

It reads one JSON command per line on stdin and answers on file descriptor N (stdout stays free for
whatever libraries print). Commands: load, generate, train, unload,
lora_load, lora_unload, status, fault, exit. Every answer
carries the command's id; a generate or a train also streams progress lines.
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
    from acestep.worker import messages as wire
    from acestep.worker.classify import classify

    def send(message: wire.Answer) -> None:
        out.write(wire.encode(message))
        out.flush()

    send(wire.Ready(os.getpid()))
    for line in sys.stdin:
        if not line.strip():
            continue
        ident = None
        try:
            command = wire.decode(line)
            ident = command.id
            match command:
                case wire.Generate():
                    request = GenerationRequest.model_validate(command.request)
                    result = runner.generate(
                        request,
                        command.output_dir,
                        lambda stage, fraction, ident=ident: send(wire.Progress(ident, stage, fraction)),
                        lm_only=command.lm_only,
                        model=command.model,
                    )
                    load = runner.take_job_load()
                    reply = {"result": result.model_dump(mode="json"), "load": load and load.as_dict()}
                case wire.Train():
                    from acestep.training.request import TrainingRequest

                    reply = runner.train(
                        TrainingRequest.model_validate(command.request),
                        command.dataset,
                        lambda p, ident=ident: send(wire.Progress(ident, p.stage, p.fraction, p.as_dict())),
                        model=command.model,
                    )
                case wire.Load():
                    reply = runner.load(command.model).as_dict()
                case wire.Unload():
                    reply = runner.unload(command.level).as_dict()
                case wire.LoraLoad():
                    reply = runner.load_lora(command.names).as_dict()
                case wire.LoraUnload():
                    reply = runner.unload_lora(command.names).as_dict()
                case wire.Status():
                    reply = {
                        "state": runner.state,
                        "residency": runner.residency(),
                        "adapters": runner.adapters(),
                        "models": runner.models(),
                        "model": runner.current,
                        "memory": snapshot(runner.source).as_dict(),
                    }
                case wire.Fault():
                    runner.inject_fault(command.stage, command.kind)
                    reply = {}
                case wire.Exit():
                    runner.unload("free")
                    send(wire.Done(ident, {}))
                    return
                case _:
                    raise JobError("internal", f"not a worker command: {command!r}")
            send(wire.Done(ident, reply))
        except wire.MessageError as exc:  # a bad line is answered too; the worker keeps serving
            send(wire.Failed(exc.ident, "internal", str(exc)))
        except Exception as exc:  # every failure becomes an answer; the worker keeps serving
            error = classify(exc)
            send(wire.Failed(ident, error.kind, str(error)))


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
