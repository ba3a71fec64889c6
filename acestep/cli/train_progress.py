"""What ``acestep train`` shows while it runs, and how Ctrl-C reaches the trainer.

The trainer reports a ``TrainingProgress`` after each preprocessed file and each update; this
draws a tqdm bar per stage on stderr (the files of a preprocessing pass; the updates with loss,
learning rate and epoch), or, when stderr is not a terminal, a line per stage and per epoch. The
first SIGINT asks the trainer to stop after the update in progress (it writes its last checkpoint
and exports the adapter); a second one aborts.
"""

from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from acestep.training.progress import TrainingProgress

STAGE_LABELS = {
    "preprocess_vae": "encode audio",
    "preprocess_text": "encode text",
    "preprocess_condition": "condition",
    "train": "train",
    "saving": "export",
}
INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
BAR_STAGES = ("preprocess_vae", "preprocess_text", "preprocess_condition", "train")


class Interrupt:
    """SIGINT: the first asks the run to stop after its update, the second aborts."""

    def __init__(self):
        self.asked = False
        self._previous = None

    def __enter__(self) -> Interrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.asked:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.asked = True
        print(
            "\nstopping after the update in progress (the adapter is kept); Ctrl-C again aborts",
            file=sys.stderr,
            flush=True,
        )

    def __call__(self) -> bool:
        return self.asked


class TrainingReport:
    """The run's progress on stderr: a tqdm bar per stage, or a line per stage and per epoch."""

    def __init__(self, bars: bool):
        self.bars = bars
        self._bar = None
        self._stage = None
        self._epoch = None

    def __call__(self, p: TrainingProgress) -> None:
        if p.stage != self._stage:
            self._open(p)
        if p.stage == "train":
            self._train(p)
        elif self._bar is not None:
            self._bar.update(min(self._bar.total, round(p.fraction * self._bar.total)) - self._bar.n)

    def _open(self, p: TrainingProgress) -> None:
        self.close()
        self._stage = p.stage
        label = STAGE_LABELS.get(p.stage)
        if label is None:
            return
        if not self.bars or p.stage not in BAR_STAGES:
            print(f"{label}...", file=sys.stderr, flush=True)
            return
        from tqdm import tqdm

        train = p.stage == "train"
        # A pass reports after each file it computes: its first fraction is 1 / files.
        files = round(1.0 / p.fraction) if p.fraction > 0 else 1
        # The first report comes after the first file or update: the rate counts from there (and
        # a resumed run starts past zero).
        self._bar = tqdm(
            total=p.total_steps if train else files,
            initial=max(p.step - 1, 0) if train else 0,
            desc=label,
            unit="step" if train else "file",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=True,
        )

    def _train(self, p: TrainingProgress) -> None:
        loss = "-" if p.loss is None else f"{p.loss:.4f}"
        lr = "-" if p.learning_rate is None else f"{p.learning_rate:.2e}"
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss}, lr {lr}, epoch {p.epoch}/{p.epochs}", refresh=False)
            self._bar.update(p.step - self._bar.n)
        elif not self.bars and p.epoch != self._epoch:
            self._epoch = p.epoch
            print(
                f"epoch {p.epoch}/{p.epochs}: step {p.step}/{p.total_steps}, loss {loss}, lr {lr}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


__all__ = ["INTERRUPTED", "STAGE_LABELS", "Interrupt", "TrainingReport"]
