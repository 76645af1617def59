"""Learning-rate schedules as a per-step table, computed by torch's own schedulers.

The trainer needs the learning rate of every member at every step as a tensor on the
device (no host round-trip per step). Rather than re-deriving cosine or one-cycle
formulas, we step torch.optim.lr_scheduler on a throw-away optimizer and record the
values, so "cosine" here means exactly what it means in PyTorch.

Cost: a table is made once per schedule (every field it reads, and the steps per epoch) and
kept: a sweep's trials share few schedules, and stepping a scheduler 7,820 times (10 epochs
of batch 64) took about 0.2 s a trial, before training, on the sweep's critical path. The
throw-away optimizer is never stepped (nothing reads its parameter): that was 85% of the cost.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch.optim import lr_scheduler

from fmnist_core.config import RunConfig

# Every RunConfig field a table depends on: the key it is kept under.
SCHEDULE_FIELDS = ("lr", "schedule", "epochs", "warmup_epochs", "step_size", "step_gamma")


def lr_table(cfg: RunConfig, steps_per_epoch: int) -> torch.Tensor:
    """Learning rate for each of the `epochs * steps_per_epoch` steps, float64 [T] (a fresh copy)."""
    return _table(*(getattr(cfg, name) for name in SCHEDULE_FIELDS), steps_per_epoch).clone()


@functools.lru_cache(maxsize=16)  # 16 tables of 100 epochs of batch 64: 10 MB
def _table(lr: float, schedule: str, epochs: int, warmup_epochs: float, step_size: int, step_gamma: float,
           steps_per_epoch: int) -> torch.Tensor:
    total = epochs * steps_per_epoch
    dummy = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([dummy], lr=lr)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)

    if schedule == "onecycle":
        # One-cycle has its own warm-up (30% of the steps, from lr/25 up to lr).
        scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    else:
        main_steps = total - warmup
        if schedule == "constant":
            main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        elif schedule == "step":
            main = lr_scheduler.StepLR(optimizer, step_size=step_size * steps_per_epoch, gamma=step_gamma)
        elif schedule == "cosine":
            main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=main_steps)
        else:  # config validation makes this unreachable
            raise AssertionError(f"unhandled schedule {schedule!r}")
        if warmup:
            # lr * k / warmup for k = 1..warmup: the peak is reached on the last warm-up step.
            ramp = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=max(warmup - 1, 1))
            scheduler = lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
        else:
            scheduler = main

    values = [0.0] * total
    with warnings.catch_warnings():  # the optimizer is never stepped, on purpose (see the docstring)
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        for step in range(total):
            values[step] = optimizer.param_groups[0]["lr"]
            scheduler.step()
    return torch.tensor(values, dtype=torch.float64)
