"""What a person sees while models train: a progress bar with live metrics, a summary; for a sweep, the
progress of each pack (the trials trained together as one population) with its ETA, the round's and a
bound on the sweep's rest.

Kept apart from the trainer (which only calls back) so that tests and sweeps can train
silently, and so the CLI stays a thin layer. It displays and writes nothing: the data is loaded
and the checkpoint written by the caller (run_log.train_tracked, `cli.py train --no-track`).

On a terminal a pack is a bar that moves within the epoch (the trainer's on_progress) and gives its ETA;
in a log (no terminal: `make sweep > log`, a worker of --workers N) it is one line when the pack starts and
one per epoch, flushed at once, so a log shows progress long before the first trial ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

import click
from tqdm import tqdm

if TYPE_CHECKING:
    from fmnist_core import data as fdata
    from fmnist_core.config import RunConfig
    from fmnist_core.trainer import TrainResult


def train_with_progress(cfg: RunConfig, splits: fdata.Splits,
                        on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train on `splits` (and their device) with a progress bar; print a summary. Writes nothing."""
    from fmnist_core.trainer import train

    click.echo(f"Training {cfg.impl} MLP 784-{cfg.hidden_size}-10 on {splits.device} "
               f"({len(splits.train_y)} train / {len(splits.val_y)} val / {len(splits.test_y)} test)")
    steps_per_epoch = -(-len(splits.train_y) // cfg.batch_size)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, unit="step", dynamic_ncols=True, leave=True)

    def show_progress(step: int, total: int) -> None:
        bar.total = total
        bar.update(step - bar.n)

    def show_epoch(metrics: dict[str, float]) -> None:
        bar.set_postfix(epoch=metrics["epoch"], loss=f"{metrics['train_loss']:.4f}",
                        val_acc=f"{metrics.get('val_acc', float('nan')):.4f}",
                        sps=f"{metrics['samples_per_second']:.0f}")
        if on_epoch:
            on_epoch(metrics)

    try:
        result = train(cfg, splits, on_epoch=show_epoch, on_progress=show_progress)
        finish_bar(bar, len(result.history) * steps_per_epoch)
    finally:
        bar.close()
    click.echo(summary(result))
    return result


def finish_bar(bar: tqdm, steps_done: int) -> None:
    """Fill the bar: the trainer reports progress every PROGRESS_EVERY steps, so its last report falls
    short of the end, and early stopping ends before the planned total. The bar then shows the steps
    that ran as 100%."""
    bar.total = steps_done
    bar.update(steps_done - bar.n)
    bar.refresh()


def summary(result: TrainResult) -> str:
    last = result.history[-1]
    seconds = sum(m["epoch_seconds"] for m in result.history)
    return (f"Done: {len(result.history)} epochs in {seconds:.1f} s ({result.stop_reason}); "
            f"best epoch {result.best_epoch}: val_acc {result.best_val_acc:.4f}; "
            f"test_acc {result.test_acc:.4f} (test_loss {result.test_loss:.4f}); "
            f"last train_loss {last['train_loss']:.4f}")


@dataclass(frozen=True)
class Outlook:
    """What follows a pack. `queued_after`: the trials of this round (a decided sweep's round, else the
    sweep's queue) still to train after it. `later_at_most`: the most trials the sweep can add in its later
    rounds (None: unknown, e.g. a time budget only). `round_name`: "round", or "sweep" without rounds."""

    queued_after: int = 0
    later_at_most: int | None = 0
    round_name: str = "round"


class PackProgress:
    """The progress of one pack of a sweep, fed by the trainer's callbacks (`on_progress`, `on_epoch_end`).

    `members`: the pack's trial numbers; `outlook`: what follows it. The round's ETA assumes the trials
    after this pack cost this pack's time per trial; the sweep's rest is bounded in trials (its time at
    this pace is an estimate).
    """

    def __init__(self, title: str, members: Sequence[int], epochs: int, steps_per_epoch: int, *,
                 tty: bool, outlook: Outlook = Outlook(), stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, position: int = 1) -> None:
        self.title, self.members, self.epochs = title, list(members), epochs
        self.steps_per_epoch, self.total_steps = steps_per_epoch, epochs * steps_per_epoch
        self.tty, self.queued_after, self.later_at_most = tty, outlook.queued_after, outlook.later_at_most
        self.round_name, self.stream, self.clock = outlook.round_name, stream, clock
        self.started = clock()
        self.epoch_seconds: list[float] = []
        self.bar = None
        if tty:
            self.bar = tqdm(total=self.total_steps, unit="step", desc=f"{title} pack of {len(self.members)}",
                            leave=False, dynamic_ncols=True, position=position, file=stream)
            self._postfix()
        else:
            self._line(f"pack of {len(self.members)} {trials_label(self.members)} starts: {epochs} epoch"
                       f"{'s' if epochs != 1 else ''} of {steps_per_epoch} steps; {self._rest()}")

    def on_progress(self, step: int, total: int) -> None:
        """The trainer's on_progress: steps of the whole pack (every epoch), of `total`."""
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(step - self.bar.n)

    def on_epoch_end(self, epoch: int, by_member: dict[int, dict[str, float]]) -> None:
        """The trainer's on_epoch_end: every member that trained `epoch`, with its metrics."""
        metrics = list(by_member.values())
        if metrics:
            self.epoch_seconds.append(metrics[0]["epoch_seconds"])
        accuracies = [m["val_acc"] for m in metrics if "val_acc" in m]
        accuracy = (f"val_acc {min(accuracies):.4f}" + (f"-{max(accuracies):.4f}" if len(accuracies) > 1
                                                        else "")) if accuracies else "no validation"
        seconds = self.epoch_seconds[-1] if self.epoch_seconds else 0.0
        if self.bar is not None:
            self.bar.update(epoch * self.steps_per_epoch - self.bar.n)
            self._postfix(epoch, accuracy)
            return
        members = len(self.members)
        active = f"{len(metrics)} of {members} training, " if len(metrics) < members else ""
        self._line(f"pack of {len(self.members)} {trials_label(self.members)}, epoch {epoch}/{self.epochs}: "
                   f"{active}{accuracy}, {seconds:.1f} s; pack ~{duration(self.pack_left(epoch))} left; "
                   f"{self._rest(epoch)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> PackProgress:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def pack_left(self, epoch: int) -> float:
        """Seconds this pack still needs after `epoch`, at the mean pace of its epochs so far."""
        if not self.epoch_seconds:
            return float("nan")
        return (self.epochs - epoch) * sum(self.epoch_seconds) / len(self.epoch_seconds)

    def per_trial(self) -> float:
        """Seconds a trial costs in this pack: the pack's (estimated) whole time over its members."""
        if not self.epoch_seconds:
            return float("nan")
        return self.epochs * sum(self.epoch_seconds) / len(self.epoch_seconds) / len(self.members)

    def _rest(self, epoch: int = 0) -> str:
        """The round after this pack and the sweep's later rounds, in words."""
        round_left = self.pack_left(epoch) + self.queued_after * self.per_trial()
        text = f"{self.queued_after} more trial{'s' if self.queued_after != 1 else ''} queued in this " \
               f"{self.round_name}"
        if epoch:
            text += f", {self.round_name} ~{duration(round_left)} left"
        if self.later_at_most is None:
            return text + "; later rounds: not bounded (a time budget)"
        if self.later_at_most:
            plural = "s" if self.later_at_most != 1 else ""
            later = f"; later rounds: at most {self.later_at_most} trial{plural}"
            if epoch:
                later += f" (~{duration(self.later_at_most * self.per_trial())} at this pace)"
            return text + later
        return text

    def _postfix(self, epoch: int = 0, accuracy: str = "") -> None:
        parts = [f"epochs done {epoch}/{self.epochs}"] + ([accuracy] if accuracy else [])
        if epoch:
            round_left = self.pack_left(epoch) + self.queued_after * self.per_trial()
            parts.append(f"{self.round_name} ~{duration(round_left)}")
        elif self.queued_after:
            parts.append(f"+{self.queued_after} queued")
        if self.later_at_most:
            parts.append(f"later <= {self.later_at_most} trials")
        self.bar.set_postfix_str(", ".join(parts))

    def _line(self, text: str) -> None:
        stream = self.stream or sys.stdout
        tqdm.write(f"{self.title}: {text}", file=stream)
        stream.flush()  # a log file is block-buffered: the line would wait for kilobytes more


def trials_label(numbers: Sequence[int]) -> str:
    """`(trial 3)`, `(trials 0-4)`, `(trials 0-2, 7)`: runs of consecutive numbers collapsed."""
    numbers = sorted(numbers)
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)
    return f"(trial{'s' if len(numbers) != 1 else ''} {text})"


def duration(seconds: float) -> str:
    """`45 s`, `3 min 20 s`, `1 h 05 min`; `?` before anything was timed."""
    if seconds != seconds:  # NaN
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
