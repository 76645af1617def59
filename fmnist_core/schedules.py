"""Learning-rate schedules as a per-step table, computed by torch's own schedulers.

The trainer needs the learning rate of every member at every step as a tensor on the
device (no host round-trip per step). Rather than re-deriving cosine or one-cycle
formulas, we step torch.optim.lr_scheduler on a throw-away optimizer and record the
values, so "cosine" here means exactly what it means in PyTorch.
"""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler

from fmnist_core.config import RunConfig


def lr_table(cfg: RunConfig, steps_per_epoch: int) -> torch.Tensor:
    """Learning rate for each of the `epochs * steps_per_epoch` steps, float64 [T]."""
    total = cfg.epochs * steps_per_epoch
    dummy = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([dummy], lr=cfg.lr)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)

    if cfg.schedule == "onecycle":
        # One-cycle has its own warm-up (30% of the steps, from lr/25 up to lr).
        scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total)
    else:
        main_steps = total - warmup
        if cfg.schedule == "constant":
            main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        elif cfg.schedule == "step":
            main = lr_scheduler.StepLR(optimizer, step_size=cfg.step_size * steps_per_epoch,
                                       gamma=cfg.step_gamma)
        elif cfg.schedule == "cosine":
            main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=main_steps)
        else:  # config validation makes this unreachable
            raise AssertionError(f"unhandled schedule {cfg.schedule!r}")
        if warmup:
            # lr * k / warmup for k = 1..warmup: the peak is reached on the last warm-up step.
            ramp = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=max(warmup - 1, 1))
            scheduler = lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
        else:
            scheduler = main

    values = torch.empty(total, dtype=torch.float64)
    for step in range(total):
        values[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()  # silences the "scheduler.step() before optimizer.step()" warning
        scheduler.step()
    return values
