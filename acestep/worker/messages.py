"""The messages across the worker pipe (``worker/process.py`` <-> ``worker/child.py``).

One dataclass per message, one JSON object per line. Commands go to the worker as
``{"op": ..., "id": ..., fields}``; the worker answers ``{"event": "ready", "pid": ...}`` once,
then per command any ``{"id": ..., "progress": [stage, fraction]}`` lines and one
``{"id": ..., "ok": true, "reply": {...}}`` or ``{"id": ..., "ok": false, "error": {...}}``; a
training run's progress lines also carry ``"detail"`` (its ``TrainingProgress``).
``encode`` and ``decode`` are the only places that know this shape.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar


class Op(StrEnum):
    LOAD = "load"
    GENERATE = "generate"
    TRAIN = "train"
    UNLOAD = "unload"
    LORA_LOAD = "lora_load"
    LORA_UNLOAD = "lora_unload"
    STATUS = "status"
    FAULT = "fault"
    EXIT = "exit"


class MessageError(ValueError):
    """A line that is not a worker message; ``ident`` is the command's id when it could be read."""

    def __init__(self, message: str, ident: int | None = None):
        super().__init__(message)
        self.ident = ident


# -- commands (server -> worker) -------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    op: ClassVar[Op] = Op.LOAD
    id: int
    model: str | None = None  # the DiT to load (None: the one in use)


@dataclass(frozen=True)
class Generate:
    op: ClassVar[Op] = Op.GENERATE
    id: int
    request: dict[str, Any]  # GenerationRequest.model_dump(mode="json", exclude_unset=True)
    output_dir: str
    lm_only: bool = False
    model: str | None = None  # the DiT to run it on (None: the one in use)


@dataclass(frozen=True)
class Train:
    op: ClassVar[Op] = Op.TRAIN
    id: int
    request: dict[str, Any]  # TrainingRequest.model_dump(mode="json")
    dataset: str  # the dataset file or folder, resolved by the server
    model: str | None = None  # the DiT to train on (None: the one in use)


@dataclass(frozen=True)
class Unload:
    op: ClassVar[Op] = Op.UNLOAD
    id: int
    level: str


@dataclass(frozen=True)
class LoraLoad:
    op: ClassVar[Op] = Op.LORA_LOAD
    id: int
    names: list[str]


@dataclass(frozen=True)
class LoraUnload:
    op: ClassVar[Op] = Op.LORA_UNLOAD
    id: int
    names: list[str] | None = None


@dataclass(frozen=True)
class Status:
    op: ClassVar[Op] = Op.STATUS
    id: int


@dataclass(frozen=True)
class Fault:
    op: ClassVar[Op] = Op.FAULT
    id: int
    stage: str
    kind: str


@dataclass(frozen=True)
class Exit:
    op: ClassVar[Op] = Op.EXIT
    id: int


Command = Load | Generate | Train | Unload | LoraLoad | LoraUnload | Status | Fault | Exit
COMMANDS: dict[Op, type] = {
    cls.op: cls for cls in (Load, Generate, Train, Unload, LoraLoad, LoraUnload, Status, Fault, Exit)
}

# -- answers (worker -> server) --------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Progress:
    id: int
    stage: str
    fraction: float
    detail: dict[str, Any] | None = None  # a training run's TrainingProgress.as_dict()


@dataclass(frozen=True)
class Done:
    id: int
    reply: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    id: int | None
    kind: str
    message: str


Answer = Ready | Progress | Done | Failed
Message = Command | Answer


def encode(message: Message) -> str:
    """One line (with its newline) for ``message``."""
    if isinstance(message, Ready):
        data: dict[str, Any] = {"event": "ready", "pid": message.pid}
    elif isinstance(message, Progress):
        data = {"id": message.id, "progress": [message.stage, message.fraction]}
        if message.detail is not None:
            data["detail"] = message.detail
    elif isinstance(message, Done):
        data = {"id": message.id, "ok": True, "reply": message.reply}
    elif isinstance(message, Failed):
        data = {"id": message.id, "ok": False, "error": {"kind": message.kind, "message": message.message}}
    elif type(message) in COMMANDS.values():
        data = {"op": message.op.value, **asdict(message)}
    else:
        raise TypeError(f"not a worker message: {message!r}")
    return json.dumps(data) + "\n"


def _build(cls: type, data: dict[str, Any], ident: int | None) -> Message:
    names = {f.name for f in fields(cls)}
    extra = set(data) - names
    if extra:
        raise MessageError(f"{cls.__name__} has no field(s) {sorted(extra)}", ident)
    try:
        return cls(**data)
    except TypeError as exc:  # a required field is missing
        raise MessageError(f"malformed {cls.__name__} message: {exc}", ident) from None


def decode(line: str | bytes) -> Message:
    """The message on ``line``; anything else raises :class:`MessageError`."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise MessageError(f"not a JSON line: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError(f"a worker message is a JSON object, got {type(data).__name__}")
    ident = data.get("id") if isinstance(data.get("id"), int) else None
    if "op" in data:
        name = data.pop("op")
        try:
            op = Op(name)
        except ValueError:
            raise MessageError(f"unknown worker command {name!r}", ident) from None
        return _build(COMMANDS[op], data, ident)
    if data.get("event") == "ready":
        return _build(Ready, {k: v for k, v in data.items() if k != "event"}, None)
    if "progress" in data:
        progress = data["progress"]
        if not (isinstance(progress, list) and len(progress) == 2):
            raise MessageError(f"a progress line carries [stage, fraction], got {progress!r}", ident)
        detail = data.get("detail")
        if detail is not None and not isinstance(detail, dict):
            raise MessageError(f"a progress detail is a JSON object, got {detail!r}", ident)
        return Progress(ident, str(progress[0]), float(progress[1]), detail)
    if data.get("ok") is True and isinstance(data.get("reply"), dict):
        return Done(ident, data["reply"])
    error = data.get("error")
    if data.get("ok") is False and isinstance(error, dict) and {"kind", "message"} <= set(error):
        return Failed(ident, str(error["kind"]), str(error["message"]))
    raise MessageError(f"not a worker message: {data!r}", ident)


__all__ = [
    "COMMANDS",
    "Answer",
    "Command",
    "Done",
    "Exit",
    "Failed",
    "Fault",
    "Generate",
    "Load",
    "LoraLoad",
    "LoraUnload",
    "Message",
    "MessageError",
    "Op",
    "Progress",
    "Ready",
    "Status",
    "Train",
    "Unload",
    "decode",
    "encode",
]
