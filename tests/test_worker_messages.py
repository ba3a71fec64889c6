"""The worker pipe's messages: every command and answer survives encode/decode, and a line that is
not a message is refused with a reason instead of being guessed at."""

from __future__ import annotations

import json

import pytest

from acestep.worker import messages as wire
from acestep.worker.messages import Op

# One filled-in example per op; a new Op without an example fails the coverage test below.
EXAMPLES: dict[Op, wire.Command] = {
    Op.LOAD: wire.Load(1),
    Op.GENERATE: wire.Generate(2, request={"caption": "rain", "seed": 7}, output_dir="out", lm_only=True),
    Op.TRAIN: wire.Train(
        9, request={"dataset": "songs", "lora_rank": 8}, dataset="/data/songs", model="base"
    ),
    Op.UNLOAD: wire.Unload(3, "park"),
    Op.LORA_LOAD: wire.LoraLoad(4, ["a", "b"]),
    Op.LORA_UNLOAD: wire.LoraUnload(5, None),
    Op.STATUS: wire.Status(6),
    Op.FAULT: wire.Fault(7, "dit", "oom"),
    Op.EXIT: wire.Exit(8),
}


def test_every_op_has_one_command_and_an_example():
    assert set(EXAMPLES) == set(Op) == set(wire.COMMANDS)


@pytest.mark.parametrize("op", list(Op))
def test_every_command_round_trips_as_one_json_line(op):
    command = EXAMPLES[op]
    line = wire.encode(command)
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line)["op"] == op.value  # the wire format names the op as before
    back = wire.decode(line)
    assert back == command and type(back) is type(command)


@pytest.mark.parametrize(
    "answer",
    [
        wire.Ready(4242),
        wire.Progress(3, "dit", 0.5),
        wire.Progress(3, "train", 0.25, {"step": 5, "loss": 0.5, "losses": [[5, 0.5]]}),
        wire.Done(3, {"action": "load", "seconds": 1.5}),
        wire.Failed(3, "oom", "CUDA out of memory"),
        wire.Failed(None, "internal", "not a JSON line"),
    ],
)
def test_every_answer_round_trips(answer):
    assert wire.decode(wire.encode(answer)) == answer


def test_the_wire_shape_is_the_one_the_worker_has_always_spoken():
    assert json.loads(wire.encode(wire.Unload(9, "free"))) == {"op": "unload", "id": 9, "level": "free"}
    assert json.loads(wire.encode(wire.Progress(9, "vae", 1.0))) == {"id": 9, "progress": ["vae", 1.0]}
    detail = json.loads(wire.encode(wire.Progress(9, "train", 0.5, {"step": 1})))
    assert detail == {"id": 9, "progress": ["train", 0.5], "detail": {"step": 1}}
    with pytest.raises(wire.MessageError, match="detail is a JSON object"):
        wire.decode('{"id": 9, "progress": ["train", 0.5], "detail": [1]}')
    failed = json.loads(wire.encode(wire.Failed(9, "input", "bad")))
    assert failed == {"id": 9, "ok": False, "error": {"kind": "input", "message": "bad"}}


def test_an_unknown_op_is_refused_with_its_name_and_id():
    with pytest.raises(wire.MessageError, match="unknown worker command 'explode'") as caught:
        wire.decode(json.dumps({"op": "explode", "id": 12}))
    assert caught.value.ident == 12  # so the worker can answer the caller that sent it


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not a JSON line"),
        ("[1, 2]", "a worker message is a JSON object"),
        ('{"op": "unload", "id": 1}', "malformed Unload message"),  # no level
        ('{"op": "load", "id": 1, "level": "park"}', r"Load has no field\(s\) \['level'\]"),
        ('{"id": 1, "progress": ["dit"]}', "a progress line carries"),
        ('{"id": 1, "ok": false}', "not a worker message"),
        ('{"hello": "there"}', "not a worker message"),
    ],
)
def test_a_malformed_line_is_refused_with_a_clear_error(line, reason):
    with pytest.raises(wire.MessageError, match=reason):
        wire.decode(line)


def test_encode_refuses_what_is_not_a_message():
    with pytest.raises(TypeError, match="not a worker message"):
        wire.encode({"op": "load", "id": 1})  # type: ignore[arg-type]


def test_both_runners_implement_the_runner_protocol():
    """The dispatcher calls these on either runner without probing for them."""
    from acestep.worker.process import ProcessRunner
    from acestep.worker.runner import InProcessRunner, Runner

    members = {name for name in vars(Runner) if not name.startswith("_")}
    assert {"generate", "load", "unload", "alive", "restart", "state", "pid"} <= set(members)
    for runner in (InProcessRunner, ProcessRunner):
        missing = sorted(name for name in members if not hasattr(runner, name))
        assert missing == [], f"{runner.__name__} lacks {missing}"
