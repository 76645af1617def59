"""What a person sees while a run trains: a progress bar with live metrics, a summary.

Kept apart from the trainer (which only calls back) so that tests and sweeps can train
silently, and so the CLI stays a thin layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click
from tqdm import tqdm

from fmnist_core import data as fdata
from fmnist_core.checkpoint import save_checkpoint
from fmnist_core.config import RunConfig
from fmnist_core.trainer import SPLIT_SEED, TrainResult, checkpoint_payload, resolve_device, train

CHECKPOINT_DIR = Path("checkpoints")


def default_checkpoint_path(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return CHECKPOINT_DIR / f"{cfg.impl}-h{cfg.hidden_size}-seed{cfg.seed}-{stamp}.pt"


def train_with_progress(cfg: RunConfig, *, data_dir=None, checkpoint: Path | None = None,
                        on_epoch: Callable[[dict[str, float]], None] | None = None,
                        splits: fdata.Splits | None = None) -> tuple[TrainResult, Path]:
    """Train with a progress bar, write the checkpoint, print a summary."""
    device = resolve_device(cfg.device)
    if splits is None:
        splits = fdata.load_splits(data_dir, val_size=cfg.val_size, seed=SPLIT_SEED, device=device)
    checkpoint = checkpoint or default_checkpoint_path(cfg)
    click.echo(f"Training {cfg.impl} MLP 784-{cfg.hidden_size}-10 on {device} "
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
    path = save_checkpoint(checkpoint, **checkpoint_payload(result, splits))
    click.echo(summary(result))
    click.echo(f"Checkpoint: {path}")
    return result, path


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
