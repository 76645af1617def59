"""Device choice, seeding and the training loop: train(cfg) -> TrainResult.

One loop serves a single run and a population of K runs trained together as one batched
computation (`train_population`): a single run is a population of one. Members share the
shape (impl, hidden size, activation, batch size, epochs, schedule kind, augmentation) and
keep their own hyperparameters, seed, data order, metrics, early stopping and best state.

The dataset lives on the device as tensors; blocks of the epoch's data order are gathered
by index and augmented there, and each step slices its batch from the block. Per-step
statistics stay on the device and are read once per epoch, so a GPU never waits for the
host inside an epoch.

This module knows nothing of MLflow or Optuna. Callers observe it through callbacks:
`on_epoch(member, metrics) -> bool | None` (return True to stop that member, e.g. a
pruned trial) and `on_progress(step, total_steps)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fmnist_core import data as fdata
from fmnist_core.config import ConfigError, RunConfig
from fmnist_core.metrics import loss_and_correct
from fmnist_core.schedules import lr_table

# The validation set is the same for every run, whatever its seed, so that runs of a
# sweep are compared on identical images.
SPLIT_SEED = 0
EVAL_CHUNK = 5000  # samples per evaluation forward pass: bounds memory at large hidden sizes
BLOCK_SAMPLES = 1024  # training images gathered and augmented at once: cache-sized (epoch_batches)
PROGRESS_EVERY = 50  # steps between on_progress calls
STEP_STATS = ("loss_sum", "correct", "grad_norm", "clipped")  # what learner.train_step returns, per member
# Fields that must agree between members of one population (they set tensor shapes or the loop).
SHARED_FIELDS = ("impl", "hidden_size", "activation", "batch_size", "epochs", "schedule", "augment_flip",
                 "augment_rotate", "augment_translate", "val_size", "device", "patience")

EpochCallback = Callable[[int, dict[str, float]], "bool | None"]
ProgressCallback = Callable[[int, int], None]


class Diverged(RuntimeError):
    """The loss became NaN or Inf; the run cannot be trusted past this point."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"training diverged: non-finite loss at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


@dataclass
class TrainResult:
    config: RunConfig
    history: list[dict[str, float]] = field(default_factory=list)  # one dict of metrics per epoch
    best_epoch: int = 0  # 1-based; 0 while no epoch finished
    best_val_acc: float = float("nan")
    best_state: dict[str, torch.Tensor] | None = None  # nn.Linear layout, CPU, from best_epoch
    test_loss: float = float("nan")
    test_acc: float = float("nan")
    stop_reason: str = "completed"  # completed | early_stopped | stopped_by_callback | diverged
    error: Diverged | None = None
    device: str = "cpu"

    def final_metrics(self) -> dict[str, float]:
        return {"best_epoch": self.best_epoch, "best_val_acc": self.best_val_acc,
                "test_loss": self.test_loss, "test_acc": self.test_acc}


def resolve_device(name: str) -> torch.device:
    """`auto` picks the current accelerator (CUDA, then MPS) or the CPU."""
    if name == "auto":
        accelerator = torch.accelerator.current_accelerator(check_available=True)
        return accelerator if accelerator is not None else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(name, False):
        raise ConfigError(f"device {name!r} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def make_learner(configs: Sequence[RunConfig], device: torch.device):
    if configs[0].impl == "manual":
        from fmnist_core.mlp_manual import make_manual_learner

        return make_manual_learner(list(configs), device)
    from fmnist_core.mlp_torch import make_torch_learner

    return make_torch_learner(list(configs), device)


def train(cfg: RunConfig, splits: fdata.Splits | None = None, *, data_dir=None,
          on_epoch: Callable[[dict[str, float]], bool | None] | None = None,
          on_progress: ProgressCallback | None = None) -> TrainResult:
    """Train one model. Raises Diverged (after the callbacks saw every finished epoch)."""
    member_callback = (lambda _member, metrics: on_epoch(metrics)) if on_epoch else None
    [result] = train_population([cfg], splits, data_dir=data_dir, on_epoch=member_callback,
                                on_progress=on_progress)
    if result.error is not None:
        raise result.error
    return result


def train_population(configs: Sequence[RunConfig], splits: fdata.Splits | None = None, *, data_dir=None,
                     on_epoch: EpochCallback | None = None,
                     on_progress: ProgressCallback | None = None) -> list[TrainResult]:
    """Train several configurations at once; a member that diverges fails alone (result.error)."""
    configs = list(configs)
    for name in SHARED_FIELDS:
        if len({getattr(c, name) for c in configs}) > 1:
            raise ConfigError(f"population members must share {name}; group the configurations by it")
    first = configs[0]
    device = resolve_device(first.device)
    if splits is None:
        splits = fdata.load_splits(data_dir, val_size=first.val_size, seed=SPLIT_SEED, device=device)
    train_x, train_y = splits.train_x.to(device), splits.train_y.to(device)
    members = len(configs)
    n_train = train_x.shape[0]
    steps_per_epoch = -(-n_train // first.batch_size)
    # lr of every member at every step, on the device: [T, P]
    lrs = torch.stack([lr_table(c, steps_per_epoch) for c in configs], dim=1).to(device, torch.float32)
    learner = make_learner(configs, device)
    results = [TrainResult(config=c, device=str(device)) for c in configs]
    active = list(range(members))

    # Members with the same seed share data order and augmentation draws: one batch each.
    seeds = sorted({c.seed for c in configs})
    member_to_seed = torch.tensor([seeds.index(c.seed) for c in configs], device=device)
    order_generators = [torch.Generator().manual_seed(s) for s in seeds]  # CPU: same order on every device
    augment_generators = [torch.Generator(device=device).manual_seed(s + 1) for s in seeds]
    augmenting = first.augment_flip or first.augment_rotate > 0 or first.augment_translate > 0

    for epoch in range(1, first.epochs + 1):
        started = time.perf_counter()
        order = torch.stack([torch.randperm(n_train, generator=g) for g in order_generators]).to(device)
        # Every step's statistics [steps, STEP_STATS, P], written in place and read once per epoch.
        per_step = torch.empty(steps_per_epoch, len(STEP_STATS), members, device=device)
        batches = epoch_batches(train_x, train_y, order, first, augment_generators if augmenting else None,
                                mean=splits.mean, std=splits.std)
        for step, (x, y) in enumerate(batches):
            if len(seeds) == 1 and members > 1:  # one shared batch: a view, no copy per member
                x, y = x.expand(members, -1, -1), y.expand(members, -1)
            elif members > 1:
                x, y = x[member_to_seed], y[member_to_seed]
            global_step = (epoch - 1) * steps_per_epoch + step
            stats = learner.train_step(x, y, lrs[global_step])
            torch.stack([stats[key].to(per_step.dtype) for key in STEP_STATS], out=per_step[step])
            if on_progress and (global_step + 1) % PROGRESS_EVERY == 0:
                on_progress(global_step + 1, first.epochs * steps_per_epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds = time.perf_counter() - started
        per_step = per_step.cpu()  # one small copy per epoch; float64 sums (MPS has no float64)
        sums = dict(zip(STEP_STATS, per_step.double().sum(0), strict=True))
        bad = ~torch.isfinite(per_step[:, 0])  # [steps, P]: non-finite loss
        first_bad_step = torch.where(bad.any(0), bad.int().argmax(0) + 1, -1)  # 1-based step, -1 = none

        bad_steps = first_bad_step.tolist()
        for i in list(active):
            if bad_steps[i] >= 0:
                results[i].stop_reason = "diverged"
                results[i].error = Diverged(epoch, bad_steps[i])
                learner.freeze_member(i)
                active.remove(i)
        if not active:
            break
        val = evaluate_learner(learner, splits.val_x, splits.val_y) if first.val_size else None
        dead = dead_unit_fraction(learner, splits.val_x if first.val_size else train_x[:EVAL_CHUNK])
        host = {k: v.tolist() for k, v in sums.items()}
        for i in list(active):
            metrics = {
                "train_loss": host["loss_sum"][i] / n_train,
                "train_acc": host["correct"][i] / n_train,
                "lr": float(lrs[global_step, i]),
                "epoch_seconds": epoch_seconds,
                "samples_per_second": n_train / epoch_seconds,
                "grad_norm": host["grad_norm"][i] / steps_per_epoch,
                "clip_fraction": host["clipped"][i] / steps_per_epoch,
                "dead_relu_fraction": dead[i],
            }
            if val is not None:
                metrics["val_loss"], metrics["val_acc"] = val[0][i], val[1][i]
            results[i].history.append(metrics)
            score = metrics.get("val_acc", metrics["train_acc"])  # no validation set: select on train
            if results[i].best_state is None or score > results[i].best_val_acc:
                results[i].best_epoch, results[i].best_val_acc = epoch, score
                results[i].best_state = learner.member_state(i)
            stop = bool(on_epoch(i, dict(metrics, epoch=epoch))) if on_epoch else False
            if stop:
                results[i].stop_reason = "stopped_by_callback"
            elif configs[i].patience and epoch - results[i].best_epoch >= configs[i].patience:
                results[i].stop_reason = "early_stopped"
            if stop or results[i].stop_reason == "early_stopped":
                learner.freeze_member(i)
                active.remove(i)
        if not active:
            break

    # Test metrics use each member's best-validation weights.
    finished = [i for i, r in enumerate(results) if r.best_state is not None]
    for i in finished:
        learner.load_member_state(i, results[i].best_state)
    if finished:
        test_loss, test_acc = evaluate_learner(learner, splits.test_x, splits.test_y)
        for i in finished:
            results[i].test_loss, results[i].test_acc = test_loss[i], test_acc[i]
    return results


def epoch_batches(train_x: torch.Tensor, train_y: torch.Tensor, order: torch.Tensor, cfg: RunConfig,
                  augment_generators: Sequence[torch.Generator] | None, *, mean: float, std: float
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's batches [S, B, 784], [S, B] for each data-order row of `order` [S, N].

    Images are gathered and augmented BLOCK_SAMPLES at a time and each step takes a slice:
    a few large operations instead of many small ones per step (on a CPU, augmenting each
    batch of 64 on its own costs more than the training step).
    """
    batch_size = cfg.batch_size
    block_steps = max(1, BLOCK_SAMPLES // batch_size)
    for block_start in range(0, order.shape[1], block_steps * batch_size):
        index = order[:, block_start:block_start + block_steps * batch_size]  # [S, b]
        block_x, block_y = train_x[index], train_y[index]  # [S, b, 784], [S, b]
        if augment_generators is not None:
            block_x = torch.stack([fdata.augment_batch(block_x[s], g, flip=cfg.augment_flip,
                                                       rotate_degrees=cfg.augment_rotate,
                                                       translate_pixels=cfg.augment_translate,
                                                       mean=mean, std=std)
                                   for s, g in enumerate(augment_generators)])
        for start in range(0, index.shape[1], batch_size):
            yield block_x[:, start:start + batch_size], block_y[:, start:start + batch_size]


@torch.no_grad()
def evaluate_learner(learner, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean loss and accuracy of every member on (x, y), in chunks."""
    loss_sum = correct = 0
    for start in range(0, x.shape[0], EVAL_CHUNK):
        xb = x[start:start + EVAL_CHUNK].unsqueeze(0).expand(learner.population, -1, -1)
        yb = y[start:start + EVAL_CHUNK].unsqueeze(0).expand(learner.population, -1)
        chunk_loss, chunk_correct = loss_and_correct(learner.logits(xb), yb)
        loss_sum, correct = loss_sum + chunk_loss, correct + chunk_correct
    n = x.shape[0]
    return (loss_sum / n).tolist(), (correct.double() / n).tolist()


@torch.no_grad()
def dead_unit_fraction(learner, x: torch.Tensor) -> list[float]:
    """Fraction of hidden units whose pre-activation is <= 0 for every sample of x (a dead ReLU)."""
    alive = None
    for start in range(0, x.shape[0], EVAL_CHUNK):
        xb = x[start:start + EVAL_CHUNK].unsqueeze(0).expand(learner.population, -1, -1)
        fires = (learner.hidden_preactivations(xb) > 0).any(dim=1)  # [P, H]
        alive = fires if alive is None else alive | fires
    return (1.0 - alive.double().mean(dim=1)).tolist()


def checkpoint_payload(result: TrainResult, splits: fdata.Splits) -> dict[str, Any]:
    """Keyword arguments for checkpoint.save_checkpoint from a finished result."""
    if result.best_state is None:
        raise ValueError("this run has no finished epoch, so there is no checkpoint to write")
    return {
        "state_dict": result.best_state,
        "config": result.config.as_dict(),
        "normalization": {"mean": splits.mean, "std": splits.std},
        "classes": splits.classes,
        "metrics": result.final_metrics(),
    }
