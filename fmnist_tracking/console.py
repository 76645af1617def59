"""What a person sees while a run trains: a progress bar with live metrics, a summary.

Kept apart from the trainer (which only calls back) so that tests and sweeps can train
silently, and so the CLI stays a thin layer. It displays and writes nothing: the data is loaded
and the checkpoint written by the caller (run_log.train_tracked, `cli.py train --no-track`).
"""

from __future__ import annotations

from collections.abc import Callable

import click
from tqdm import tqdm

from fmnist_core import data as fdata
from fmnist_core.config import RunConfig
from fmnist_core.trainer import TrainResult, train


def train_with_progress(cfg: RunConfig, splits: fdata.Splits,
                        on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train on `splits` (and their device) with a progress bar; print a summary. Writes nothing."""
    click.echo(f"Training {cfg.impl} MLP 784-{cfg.hidden_size}-10 on {splits.device} "
               f"({len(splits.train_y)} train / {len(splits.val_y)} val / {len(splits.test_y)} test)")
    bar = tqdm(total=1, unit="step", dynamic_ncols=True, leave=True)

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
        finish_bar(bar, len(result.history) * -(-len(splits.train_y) // cfg.batch_size))
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
