"""Device choice, seeding and the training loop: train(cfg) -> TrainResult.

One loop serves a single run and a population of K runs trained together as one batched
computation (`train_population`): a single run is a population of one. Members share what sets
the loop (impl, activation, batch size, epochs, schedule kind, augmentation) and keep their own
hyperparameters, width, seed, data order, metrics, early stopping and best state. Members of one
width are stacked; members of several widths are packed, one first-layer product for all the
hidden units of the members that see the same batches (see learner.py).

The dataset lives on the device as tensors; blocks of the epoch's data order are gathered
by index and augmented there, and each step slices its batch from the block. Per-step
statistics stay on the device and are read once per epoch, so a GPU never waits for the
host inside an epoch.

Each member's best epoch is chosen by an `Objective` (val_acc, maximised, unless a sweep
optimises another): its weights are the checkpoint and give the test metrics, and early
stopping counts epochs without improvement. Selection needs validation data: with
val_size = 0 nothing is selected and the last epoch is the result. Because that choice is made on
the validation images, each member also keeps which of them its last epoch got right (`last_correct`):
a fixed epoch, chosen on no image, which is what a sweep's verdicts judge on.

This module knows nothing of MLflow or Optuna. Callers observe it through callbacks:
`on_epoch(member, metrics) -> bool | None` (return True to stop that member, e.g. a
pruned trial), `on_epoch_end(epoch, {member: metrics})` once an epoch is over for every member
(a display's line per epoch of a pack) and `on_progress(step, total_steps)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmnist_core import data as fdata
from fmnist_core.checkpoint import Checkpoint, default_path, save_checkpoint
from fmnist_core.config import DEFAULT_OBJECTIVE, ConfigError, Objective, RunConfig
from fmnist_core.learner import EVAL_CHUNK, Evaluation, Learner, dead_unit_fraction, evaluate_learner
from fmnist_core.schedules import lr_table
from fmnist_core.threads import ThreadChooser, chosen_threads

# The validation set is the same for every run, whatever its seed, so that runs of a
# sweep are compared on identical images.
BLOCK_SAMPLES = 1024  # training images gathered and augmented at once: cache-sized (epoch_batches)
PROGRESS_EVERY = 50  # steps between on_progress calls
THREAD_CHECK_EVERY = 20  # steps between looks at the clock for the thread count (threads.py: every 2 s)
STEP_STATS = ("loss_sum", "correct", "grad_norm", "clipped")  # what learner.train_step returns, per member
# Fields that must agree between members of one population (they set tensor shapes or the loop).
SHARED_FIELDS = ("impl", "activation", "batch_size", "epochs", "schedule", "augment_flip",
                 "augment_rotate", "augment_translate", "val_size", "device", "patience")

EpochCallback = Callable[[int, dict[str, float]], "bool | None"]
ProgressCallback = Callable[[int, int], None]
EpochEndCallback = Callable[[int, dict[int, dict[str, float]]], None]


class Diverged(RuntimeError):
    """The loss became NaN or Inf; the run cannot be trusted past this point."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"training diverged: non-finite loss at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


@dataclass
class TrainResult:
    """One member's outcome. Selection needs validation data: without it (val_size = 0) the
    best epoch is the last one, and best_value, best_val_acc and val_correct stay empty."""

    config: RunConfig
    objective: Objective = DEFAULT_OBJECTIVE  # what chose best_epoch
    history: list[dict[str, float]] = field(default_factory=list)  # one dict of metrics per epoch
    best_epoch: int = 0  # 1-based; 0 while no epoch finished
    best_value: float = float("nan")  # the objective's metric at best_epoch
    best_val_acc: float = float("nan")  # val_acc at best_epoch, whatever the objective
    best_state: dict[str, torch.Tensor] | None = None  # nn.Linear layout, CPU, from best_epoch
    # bool [n_val] on the CPU, in the order of splits.val_y: the images best_epoch classified right
    val_correct: torch.Tensor | None = None
    # bool [n_val], the same images at the last epoch trained: a fixed epoch, chosen on no image, what a
    # sweep's verdicts judge on (val_correct's epoch was chosen on the very images it scores)
    last_correct: torch.Tensor | None = None
    test_loss: float = float("nan")
    test_acc: float = float("nan")
    test_predictions: torch.Tensor | None = None  # int64 [n_test], CPU, at best_epoch: the confusion matrix
    stop_reason: str = "completed"  # completed | early_stopped | stopped_by_callback | diverged
    error: Diverged | None = None
    device: str = "cpu"

    @property
    def has_validation(self) -> bool:
        return self.config.val_size > 0

    def final_metrics(self) -> dict[str, float]:
        """best_epoch and the test metrics; best_val_acc and best_value only with validation data."""
        selection = {"best_val_acc": self.best_val_acc, "best_value": self.best_value}
        return {"best_epoch": self.best_epoch, **(selection if self.has_validation else {}),
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


def make_learner(configs: Sequence[RunConfig], device: torch.device, *, steps: int = 0) -> Learner:
    """The learner of the population's implementation (members share `impl`); `steps`, the steps it will
    be trained for where known, decides whether the manual learner compiles its update (fuse_pays)."""
    learner: Learner
    if configs[0].impl == "manual":
        from fmnist_core.mlp_manual import make_manual_learner

        learner = make_manual_learner(list(configs), device, steps=steps)
    else:
        from fmnist_core.mlp_torch import make_torch_learner

        learner = make_torch_learner(list(configs), device)
    return learner


def splits_for(cfg: RunConfig, data_dir=None) -> fdata.Splits:
    """A run's data, loaded once where the run starts, on the device `cfg.device` resolves to (an
    unavailable device fails here, before anything else): from then on the device is `splits.device`."""
    return fdata.load_splits(data_dir, val_size=cfg.val_size, device=resolve_device(cfg.device))


def train(cfg: RunConfig, splits: fdata.Splits, *,
          on_epoch: Callable[[dict[str, float]], bool | None] | None = None,
          on_progress: ProgressCallback | None = None,
          objective: Objective = DEFAULT_OBJECTIVE) -> TrainResult:
    """Train one model. Raises Diverged (after the callbacks saw every finished epoch)."""
    member_callback = (lambda _member, metrics: on_epoch(metrics)) if on_epoch else None
    [result] = train_population([cfg], splits, on_epoch=member_callback,
                                on_progress=on_progress, objective=objective)
    if result.error is not None:
        raise result.error
    return result


def train_population(configs: Sequence[RunConfig], splits: fdata.Splits, *,
                     on_epoch: EpochCallback | None = None,
                     on_progress: ProgressCallback | None = None,
                     objective: Objective = DEFAULT_OBJECTIVE,
                     on_epoch_end: EpochEndCallback | None = None) -> list[TrainResult]:
    """Train several configurations at once; a member that diverges fails alone (result.error).

    Each member's best epoch is the one `objective` likes best (the earlier on a tie);
    selection needs validation data, so with val_size = 0 it is the last epoch. `on_epoch_end` gets
    the metrics of the members that trained the epoch (with "epoch"), after every `on_epoch` of it."""
    configs = list(configs)
    for name in SHARED_FIELDS:
        if len({getattr(c, name) for c in configs}) > 1:
            raise ConfigError(f"population members must share {name}; group the configurations by it")
    run = _PopulationRun(configs, splits, splits.device, objective)  # the data's device (splits_for)
    with chosen_threads(splits.device) as threads:  # on a CPU: fewer threads while other processes run
        for epoch in range(1, configs[0].epochs + 1):
            per_step, epoch_seconds = run.train_epoch(epoch, on_progress, threads)
            run.stop_diverged(epoch, per_step)
            if not run.active:
                break
            validation = run.validate()
            by_member = run.epoch_metrics(epoch, per_step, epoch_seconds, validation)
            for i, metrics in by_member.items():
                run.select_best(i, epoch, metrics, validation)
                run.stop_if_done(i, epoch, metrics, on_epoch)
            if on_epoch_end:
                on_epoch_end(epoch, {i: dict(metrics, epoch=epoch) for i, metrics in by_member.items()})
            if not run.active:
                break
        run.test_best()
    return run.results


class _PopulationRun:
    """The state of one `train_population` call and the named steps of its epoch loop."""

    def __init__(self, configs: list[RunConfig], splits: fdata.Splits, device: torch.device,
                 objective: Objective) -> None:
        self.configs, self.splits, self.device, self.objective = configs, splits, device, objective
        self.shared = first = configs[0]  # holds the SHARED_FIELDS of every member
        self.train_x, self.train_y = splits.train_x.to(device), splits.train_y.to(device)
        self.n_train = self.train_x.shape[0]
        self.steps_per_epoch = -(-self.n_train // first.batch_size)
        # lr of every member at every step, on the device: [T, P]
        self.lrs = torch.stack([lr_table(c, self.steps_per_epoch) for c in configs], dim=1
                               ).to(device, torch.float32)
        self.learner = make_learner(configs, device, steps=self.shared.epochs * self.steps_per_epoch)
        self.results = [TrainResult(config=c, objective=objective, device=str(device)) for c in configs]
        self.active = list(range(len(configs)))  # members still training, in index order
        # Members with the same seed share data order and augmentation draws: one batch each.
        self.seeds = sorted({c.seed for c in configs})
        self.member_to_seed = torch.tensor([self.seeds.index(c.seed) for c in configs], device=device)
        # On the CPU: the same data order on every device.
        self.order_generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        augmenting = first.augment_flip or first.augment_rotate > 0 or first.augment_translate > 0
        self.augment_generators = ([torch.Generator(device=device).manual_seed(s + 1) for s in self.seeds]
                                   if augmenting else None)

    def train_epoch(self, epoch: int, on_progress: ProgressCallback | None,
                    threads: ThreadChooser | None = None) -> tuple[torch.Tensor, float]:
        """One pass over the training split: per-step statistics [steps, STEP_STATS, P] on the
        CPU, and the epoch's wall time in seconds. `threads` looks at the machine's load every
        THREAD_CHECK_EVERY steps."""
        started = time.perf_counter()
        members, steps = len(self.configs), self.steps_per_epoch
        order = torch.stack([torch.randperm(self.n_train, generator=g) for g in self.order_generators]
                            ).to(self.device)
        # Written in place on the device, read once per epoch.
        per_step = torch.empty(steps, len(STEP_STATS), members, device=self.device)
        batches = epoch_batches(self.train_x, self.train_y, order, self.shared, self.augment_generators,
                                mean=self.splits.mean, std=self.splits.std)
        for step, (x, y) in enumerate(batches):
            if len(self.seeds) == 1 and members > 1:  # one shared batch: a view, no copy per member
                x, y = x.expand(members, -1, -1), y.expand(members, -1)
            elif members > 1:
                x, y = x[self.member_to_seed], y[self.member_to_seed]
            global_step = (epoch - 1) * steps + step
            stats = self.learner.train_step(x, y, self.lrs[global_step])
            torch.stack([stats[key].to(per_step.dtype) for key in STEP_STATS], out=per_step[step])
            if on_progress and (global_step + 1) % PROGRESS_EVERY == 0:
                on_progress(global_step + 1, self.shared.epochs * steps)
            if threads is not None and (global_step + 1) % THREAD_CHECK_EVERY == 0:
                threads.check()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return per_step.cpu(), time.perf_counter() - started  # one small copy per epoch

    def stop_diverged(self, epoch: int, per_step: torch.Tensor) -> None:
        """Fail and freeze every active member whose loss was NaN or Inf at some step of the epoch."""
        bad = ~torch.isfinite(per_step[:, 0])  # [steps, P]: non-finite loss
        first_bad_step = torch.where(bad.any(0), bad.int().argmax(0) + 1, -1)  # 1-based step, -1 = none
        bad_steps = first_bad_step.tolist()
        for i in list(self.active):
            if bad_steps[i] >= 0:
                self.results[i].stop_reason = "diverged"
                self.results[i].error = Diverged(epoch, bad_steps[i])
                self._freeze(i)

    def validate(self) -> Evaluation | None:
        """Every member on the validation split; None without one (val_size = 0)."""
        if not self.shared.val_size:
            return None
        return evaluate_learner(self.learner, self.splits.val_x, self.splits.val_y, dead_units=True)

    def epoch_metrics(self, epoch: int, per_step: torch.Tensor, epoch_seconds: float,
                      validation: Evaluation | None) -> dict[int, dict[str, float]]:
        """The metrics of the epoch of every active member: training statistics, lr, timing,
        dead units and, with a validation split, validation loss and accuracy."""
        sums = {k: v.tolist() for k, v in zip(STEP_STATS, per_step.double().sum(0), strict=True)}  # float64
        # dead units on the validation images (from its pass), else on the first training images
        dead = validation.dead_fraction if validation is not None else \
            dead_unit_fraction(self.learner, self.train_x[:EVAL_CHUNK])
        last_step = epoch * self.steps_per_epoch - 1
        n_train, steps = self.n_train, self.steps_per_epoch
        by_member = {}
        for i in self.active:
            metrics = {
                "train_loss": sums["loss_sum"][i] / n_train,
                "train_acc": sums["correct"][i] / n_train,
                "lr": float(self.lrs[last_step, i]),
                "epoch_seconds": epoch_seconds,
                "samples_per_second": n_train / epoch_seconds,
                "grad_norm": sums["grad_norm"][i] / steps,
                "clip_fraction": sums["clipped"][i] / steps,
                "dead_relu_fraction": dead[i],
            }
            if validation is not None:
                metrics["val_loss"], metrics["val_acc"] = validation.loss[i], validation.accuracy[i]
            by_member[i] = metrics
        return by_member

    def select_best(self, i: int, epoch: int, metrics: dict[str, float], validation: Evaluation | None
                    ) -> None:
        """Record the epoch in member i's history (and which validation images it got right, as the last
        epoch so far); keep its weights if the objective likes the epoch best so far. Without validation
        data every epoch replaces the last: no selection."""
        result = self.results[i]
        result.history.append(metrics)
        if validation is not None:
            result.last_correct = validation.correct[i].to("cpu", copy=True)
            value = metrics[self.objective.metric]
            if result.best_state is not None and not self.objective.improves(value, result.best_value):
                return
            result.best_value, result.best_val_acc = value, metrics["val_acc"]
            result.val_correct = result.last_correct  # the same epoch's vector (neither is changed in place)
        result.best_epoch, result.best_state = epoch, self.learner.member_state(i)

    def stop_if_done(self, i: int, epoch: int, metrics: dict[str, float], on_epoch: EpochCallback | None
                     ) -> None:
        """Show the epoch to the callback; stop member i if the callback asks or its patience ran out."""
        result, patience = self.results[i], self.configs[i].patience
        stop = bool(on_epoch(i, dict(metrics, epoch=epoch))) if on_epoch else False
        if stop:
            result.stop_reason = "stopped_by_callback"
        elif patience and epoch - result.best_epoch >= patience:
            result.stop_reason = "early_stopped"
        if stop or result.stop_reason == "early_stopped":
            self._freeze(i)

    def test_best(self) -> None:
        """Test metrics of every member that finished an epoch, with the weights of its best epoch."""
        finished = [i for i, r in enumerate(self.results) if r.best_state is not None]
        for i in finished:
            self.learner.load_member_state(i, self.results[i].best_state)
        if finished:
            test = evaluate_learner(self.learner, self.splits.test_x, self.splits.test_y, predictions=True)
            for i in finished:
                self.results[i].test_loss, self.results[i].test_acc = test.loss[i], test.accuracy[i]
                self.results[i].test_predictions = test.predictions[i].to("cpu", copy=True)

    def _freeze(self, i: int) -> None:
        self.learner.freeze_member(i)
        self.active.remove(i)


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


def save_result(result: TrainResult, splits: fdata.Splits, path: Path | None = None) -> Checkpoint:
    """Write the result's best-validation checkpoint to `path` (default: checkpoint.default_path); returns
    it as written and checked, `.path` the file (a run's log goes on from it: RunLogger.log_result)."""
    return save_checkpoint(path or default_path(result.config), **checkpoint_payload(result, splits))


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
