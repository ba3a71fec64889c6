"""``acestep train``: one LoRA or LoKr training run from the command line, in this process.

The flags are ``TrainingRequest``'s fields (``acestep/training/request.py``): each field's flag is
its name with hyphens, except the short names in ``FLAG_NAMES`` and the two flags in
``PER_ADAPTER`` that set whichever field the chosen adapter type has. Types, choices and defaults
come from the model, and so do the bounds (pydantic refuses a bad value; the message names the
flag). The run gets the checks a server makes before queueing (``acestep.jobs.training``), then
``acestep.training.trainer.Trainer`` runs it here. Ctrl-C stops after the update in progress
(the last checkpoint is written and the adapter exported); a second Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from acestep import settings
from acestep.cli.lora import _lora_dir_flag, apply_lora_dir
from acestep.cli.memory_flags import device_flags
from acestep.cli.progress import progress_wanted
from acestep.cli.quiet import configure_logs, silence_third_party
from acestep.cli.train_progress import INTERRUPTED, Interrupt, TrainingReport
from acestep.training.field_help import HELP, PER_ADAPTER
from acestep.training.request import DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, TrainingRequest

if TYPE_CHECKING:  # torch loads only when a run starts, not for `acestep --help`
    import torch

    from acestep.checkpoints import CheckpointPaths
    from acestep.memory.precision import PrecisionPlan
    from acestep.training.dataset import Dataset
    from acestep.training.trainer import Outcome

# The fields whose flag is not ``--<field-name>``: the names a command line wants to type.
FLAG_NAMES = {
    "adapter_type": "--adapter",
    "learning_rate": "--lr",
    "train_epochs": "--epochs",
    "train_batch_size": "--batch-size",
    "gradient_accumulation": "--accumulation",
    "training_seed": "--seed",
    "save_every_n_epochs": "--save-every-epochs",
    "save_every_n_steps": "--save-every-steps",
    "warmup_steps": "--warmup",
    "training_shift": "--shift",
    "lora_dropout": "--dropout",
}
FLAG_ALIASES = {"model": ("--dit",)}  # `acestep generate` names the DiT --dit
ADAPTER_LABELS = {"lora": "LoRA", "lokr": "LoKr"}
PER_ADAPTER_DEFAULTS = {"learning_rate": DEFAULT_LEARNING_RATE, "train_epochs": DEFAULT_EPOCHS}


def _flag_of(field: str) -> str:
    for flag, fields in PER_ADAPTER.items():
        if field in fields:
            return f"--{flag}"
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def _flag_dests() -> list[str]:
    """Each flag's dest, in the fields' order: a field's name, or a PER_ADAPTER name in the place of
    its LoRA field (the LoKr field has no flag of its own)."""
    dests = []
    for name in TrainingRequest.model_fields:
        shared = [dest for dest, pair in PER_ADAPTER.items() if name in pair]
        if not shared:
            dests.append(name)
        elif name == PER_ADAPTER[shared[0]][0]:
            dests.append(shared[0])
    return dests


def _options(field: str) -> dict:
    """argparse options from the field's annotation: its type, choices, and help with default."""
    info = TrainingRequest.model_fields[PER_ADAPTER.get(field, (field,))[0]]
    kind = info.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # ``int | None``: an int
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    help_text = HELP.get(field) or info.description or field.replace("_", " ")
    if field in PER_ADAPTER:
        lora, lokr = (TrainingRequest.model_fields[f].default for f in PER_ADAPTER[field])
        default = f"LoRA {lora:g}, LoKr {lokr:g}"
    elif field in PER_ADAPTER_DEFAULTS:
        default = ", ".join(f"{ADAPTER_LABELS[k]} {v:g}" for k, v in PER_ADAPTER_DEFAULTS[field].items())
    else:
        default = info.default
    options: dict = {"default": None, "dest": field, "required": info.is_required()}
    if kind is bool:
        options["action"] = argparse.BooleanOptionalAction
        options["help"] = f"{help_text} (default: {'on' if default else 'off'})"
        return options
    if typing.get_origin(kind) is typing.Literal:
        options["choices"] = typing.get_args(kind)
    else:
        options["type"] = kind
        options["metavar"] = "N" if kind is int else ("X" if kind is float else field.upper())
    shown = "" if default is None or info.is_required() else f" (default: {default})"
    options["help"] = help_text + shown
    return options


def _train_parser(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "train",
        help="train a LoRA or LoKr adapter on a dataset, in this process",
        description="Train an adapter on one DiT: preprocess the dataset (cached), train, write the "
        "adapter into the LoRA folder (see `acestep loras`). Ctrl-C stops after the update in "
        "progress and keeps the adapter; a second Ctrl-C aborts. See docs/training.md.",
    )
    p.add_argument(
        "--checkpoint", default=None, help="checkpoints root or DiT folder (default: ACESTEP_CHECKPOINTS_DIR)"
    )
    groups = {
        "lora": p.add_argument_group("LoRA", "with --adapter lora"),
        "lokr": p.add_argument_group("LoKr", "with --adapter lokr"),
    }
    for dest in _flag_dests():
        names = [f"--{dest}" if dest in PER_ADAPTER else _flag_of(dest), *FLAG_ALIASES.get(dest, ())]
        groups.get(dest.split("_", 1)[0], p).add_argument(*names, **_options(dest))
    device_flags(p)
    _lora_dir_flag(p)
    p.add_argument("--json", action="store_true", help="print the final progress and the adapter as JSON")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: when stderr is a terminal; else a line per epoch)",
    )
    p.add_argument("--verbose", action="store_true", help="also print acestep's info log lines on stderr")


class _Stop(Exception):
    """``acestep train`` ends early: an exit code and the lines it prints on stderr."""

    def __init__(self, code: int, *lines: str):
        super().__init__(*lines)
        self.code, self.lines = code, lines


def _in_flags(message: str) -> str:
    """A message from the request or the checks, with field names as this command's flags."""
    for field in sorted(TrainingRequest.model_fields, key=len, reverse=True):
        if "_" in field:  # plain words (dataset, model, resume) stay words in sentences
            message = re.sub(rf"\b{field}(=true)?\b", _flag_of(field), message)
    return message.replace("resume=true", "--resume")


def _fields(args: argparse.Namespace) -> dict:
    fields = {}
    for dest in _flag_dests():
        value = getattr(args, dest)
        if value is None:
            continue
        field = dest
        if dest in PER_ADAPTER:
            lora, lokr = PER_ADAPTER[dest]
            field = lokr if args.adapter_type == "lokr" else lora
        fields[field] = value
    path = Path(fields["dataset"]).expanduser()
    if path.exists():  # named from here; otherwise relative to the training folder
        fields["dataset"] = str(path.resolve())
    return fields


@dataclass
class _Run:
    """What the checks settled on, for the run."""

    request: TrainingRequest  # output_name and model filled in
    dataset: Dataset
    paths: CheckpointPaths
    device: torch.device
    precision: PrecisionPlan


def _check_inputs(args: argparse.Namespace) -> _Run:
    """Every refusal before a weight loads: the flags, the checkpoint, the dataset, the run's name
    and the GPU's size (the checks a server makes before it queues a run)."""
    from pydantic import ValidationError

    from acestep.errors import validation_lines

    try:
        request = TrainingRequest(**_fields(args))
    except ValidationError as exc:
        raise _Stop(2, *(_in_flags(line) for line in validation_lines(exc.errors()))) from None
    from acestep.checkpoints import CheckpointError, resolve
    from acestep.cli.memory_flags import _memory_manager
    from acestep.jobs.training import prepare_run
    from acestep.memory.devices import resolve_device
    from acestep.memory.precision import precision_plan
    from acestep.training.dataset import open_dataset

    try:
        paths = resolve(
            args.checkpoint or str(settings.checkpoints_dir()), request.model or settings.dit_name()
        )
    except CheckpointError as exc:
        raise _Stop(1, str(exc)) from None
    try:
        manager = _memory_manager(args, {})
        device = resolve_device(args.device)
        precision = precision_plan(device, args.dtype)
        gpu_gib = manager.limits.gib if device.type == "cuda" else None
        dtype = str(precision.torch_dtype).removeprefix("torch.")
        prepared = prepare_run(request, settings.training_dir(), False, paths, gpu_gib, dtype)
        dataset = open_dataset(prepared.dataset)
    except ValueError as exc:  # the dataset, the run's name, the GPU's size: the reason says
        raise _Stop(2, _in_flags(str(exc))) from None
    return _Run(prepared.request, dataset, paths, device, precision)


def _lycoris_logs(verbose: bool) -> None:
    """LyCORIS logs each network it builds to stdout (its own handler), which would break
    ``--json``: its warnings go to stderr instead, its info lines only with ``--verbose``. Set
    before LyCORIS is imported, the handler here keeps it from adding its own."""
    log = logging.getLogger("LyCORIS")
    if not log.handlers:
        log.addHandler(logging.StreamHandler(sys.stderr))
    for handler in log.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
        handler.setFormatter(logging.Formatter("LyCORIS %(levelname)s: %(message)s"))
        handler.setLevel(logging.INFO if verbose else logging.WARNING)


def run_train(args: argparse.Namespace) -> int:
    configure_logs(args.verbose)
    _lycoris_logs(args.verbose)
    apply_lora_dir(args)
    try:
        run = _check_inputs(args)
    except _Stop as stop:
        for line in stop.lines:
            print(f"error: {line}", file=sys.stderr)
        return stop.code
    for file, why in run.dataset.problems.items():
        print(f"left out: {file}: {why}", file=sys.stderr)
    silence_third_party()
    from acestep.training.adapter import TrainingError
    from acestep.training.cache import Stopped
    from acestep.training.trainer import Trainer

    report = TrainingReport(progress_wanted(args.progress, sys.stderr))
    with Interrupt() as interrupt:
        trainer = Trainer(
            run.request,
            run.dataset,
            run.paths,
            run.device,
            run.precision,
            settings.training_dir(),
            settings.lora_dir(),
            on_progress=report,
            should_stop=interrupt,
        )
        try:
            outcome = trainer.run()
        except TrainingError as exc:
            return _fail(report, 2, _in_flags(str(exc)))
        except Stopped as exc:
            return _fail(report, INTERRUPTED, f"{exc}; what was finished stays in the preprocessing cache")
        except KeyboardInterrupt:
            return _fail(report, INTERRUPTED, f"aborted; the run's checkpoints are in {trainer.run_folder}")
        except (RuntimeError, OSError) as exc:
            return _fail(report, 1, str(exc))
        finally:
            report.close()
    if args.json:
        written = {kind: str(path) for kind, path in outcome.adapter_paths.items()}
        print(json.dumps(outcome.progress.as_dict() | {"adapter_paths": written, "run": str(outcome.run)}))
    else:
        print("\n".join(_summary(run, outcome, args.lora_dir)))
    return 0


def _fail(report: TrainingReport, code: int, message: str) -> int:
    report.close()
    print(f"error: {message}", file=sys.stderr)
    return code


def _summary(run: _Run, outcome: Outcome, lora_dir_flag: str | None) -> list[str]:
    """The run's end: the preprocessing counts, the updates, where the adapter is and how to use it."""
    p = outcome.progress
    computed, reused = p.preprocess.get("computed", {}), p.preprocess.get("reused", {})
    passes = ", ".join(f"{name} {computed[name]}/{reused.get(name, 0)}" for name in computed)
    lines = [f"preprocessing (computed/cached): {passes}"]
    if run.request.preprocess_only:
        from acestep.training.cache import cache_root

        return lines + [f"cache: {cache_root(settings.training_dir(), run.paths)}"]
    ended = "stopped" if p.stopped else "done"
    loss = "" if p.loss is None else f", last loss {p.loss:.4f}"
    lines.append(f"training {ended}: {p.step}/{p.total_steps} updates{loss}")
    lines.append(f"checkpoints: {outcome.run / 'checkpoints'} (continue with --resume)")
    lines.append(f"adapter in {settings.lora_dir()} (acestep loras lists it):")
    for kind, path in outcome.adapter_paths.items():
        lines.append(f"  {path.name}  ({kind})")
    model = f" --dit {run.paths.dit_name}" if run.paths.layout == "upstream" else ""
    folder = f" --lora-dir {lora_dir_flag}" if lora_dir_flag else ""
    tag = run.dataset.custom_tag  # the dataset's trigger word, trained into every caption
    caption = f"{tag}, ..." if tag else "..."
    lines.append(
        f"use it: acestep generate --checkpoint {run.paths.root}{model} --lora {p.adapter}{folder} "
        f'--caption "{caption}"'
    )
    return lines


__all__ = ["FLAG_NAMES", "PER_ADAPTER", "run_train"]
