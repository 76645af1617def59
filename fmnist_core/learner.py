"""What the trainer needs from a learner (the `Learner` protocol), and what it measures through one.

A learner holds a POPULATION of P independent models (784 -> H_i -> 10) and trains them as one
batched computation. Members of one width are stacked (member i owns slice i of every batched
tensor); members of different widths that see the same batches are PACKED: one first-layer product
for all of their hidden units, each member's output from its own slice of the hidden layer. Either
way each member keeps its own loss, gradient, clipping, optimizer and weights, and nothing mixes them.
Two classes satisfy it structurally, without inheriting from it:
`mlp_manual.ManualLearner` (hand-written backprop and SGD; a single model, a population or a pack) and
`mlp_torch.TorchLearner` (autograd and torch.optim). The trainer (`trainer.make_learner`) builds one
and talks to it only through these members, so a third implementation needs nothing else.

Shapes: P = population, B = samples in a batch, H_i = member i's hidden units, C = 10 classes.
Inputs are normalised pixels, (x/255 - mean)/std, flattened to 784 values, float32.
`evaluate_learner` and `dead_unit_fraction` measure all members at once through the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from fmnist_core.metrics import is_correct, loss_and_correct

EVAL_CHUNK = 5000  # samples per evaluation forward pass: bounds memory at large hidden sizes


@runtime_checkable
class Learner(Protocol):
    """A population of P MLPs that the trainer steps, evaluates, snapshots and freezes."""

    population: int
    """P: the number of members; member indices are 0..P-1 in the order of their configs."""

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> dict[str, torch.Tensor]:
        """One SGD (or Adam) step of every member that is not frozen.

        x: float [P, B, 784]; y: int64 labels [P, B]; lr: float [P], this step's learning rate
        of each member (on the CPU or the learner's device). Returns, per member, tensors of
        shape [P] on the learner's device (read by the host once per epoch, not per step):
        `loss_sum` (cross-entropy summed over the B samples, in nats, before the update),
        `correct` (how many of the B samples the pre-update logits classify right),
        `grad_norm` (global L2 norm of the gradient before clipping) and `clipped`
        (1.0 where clipping changed the gradient, else 0.0). A frozen member's loss and
        counts are still reported; its weights do not change.
        """
        ...

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation forward, no dropout and no gradient: x [P, B, 784] -> logits [P, B, 10]."""
        ...

    def logits_and_activity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`logits(x)` and which hidden units fired, from one forward pass: bool, True for a unit whose
        pre-activation z1 = x W1 + b1 is > 0 for some sample of x, in a layout of the learner's own
        (combine two with `|`; `dead_fraction` reads it)."""
        ...

    def dead_fraction(self, activity: torch.Tensor) -> list[float]:
        """[P]: the fraction of each member's hidden units that never fired in `activity`."""
        ...

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """A copy of member i's weights in the nn.Linear layout, float32 on the CPU:
        fc1.weight [H, 784], fc1.bias [H], fc2.weight [10, H], fc2.bias [10]. Later steps
        do not change the copy."""
        ...

    def load_member_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Overwrite member i's weights with `state` (layout of `member_state`); optimizer
        state and the frozen flag are left as they are."""
        ...

    def freeze_member(self, i: int) -> None:
        """Stop updating member i for good (it diverged or stopped); the others train on,
        and nothing of member i (a NaN included) reaches them."""
        ...


@dataclass(frozen=True)
class Evaluation:
    """Every member's mean loss (nats) and accuracy on n images, and which images it got right."""

    loss: list[float]  # [P]
    accuracy: list[float]  # [P]
    correct: torch.Tensor  # bool [P, n] on the images' device, in their order
    dead_fraction: list[float] | None = None  # [P], with dead_units=True: dead_unit_fraction on these images
    predictions: torch.Tensor | None = None  # int64 [P, n], with predictions=True: each image's class


@torch.no_grad()
def evaluate_learner(learner: Learner, x: torch.Tensor, y: torch.Tensor, *, dead_units: bool = False,
                     predictions: bool = False) -> Evaluation:
    """Mean loss, accuracy and per-image correctness of every member on (x, y), in chunks; with
    `dead_units`, also `dead_unit_fraction` on x, from the same forward pass (the trainer's validation:
    a second pass for the dead units cost as much as the validation itself); with `predictions`, each
    image's predicted class (the trainer's test pass: a run's confusion matrix without a second pass)."""
    loss_sum = correct = 0
    hits, predicted, alive = [], [], None
    for start in range(0, x.shape[0], EVAL_CHUNK):
        xb = x[start:start + EVAL_CHUNK].unsqueeze(0).expand(learner.population, -1, -1)
        yb = y[start:start + EVAL_CHUNK].unsqueeze(0).expand(learner.population, -1)
        if dead_units:
            logits, fired = learner.logits_and_activity(xb)
            alive = fired if alive is None else alive | fired
        else:
            logits = learner.logits(xb)
        chunk_loss, chunk_correct = loss_and_correct(logits, yb)
        loss_sum, correct = loss_sum + chunk_loss, correct + chunk_correct
        hits.append(is_correct(logits, yb))  # chunk_correct is its sum; kept per image for paired tests
        if predictions:
            predicted.append(logits.argmax(-1))
    n = x.shape[0]
    return Evaluation(loss=(loss_sum / n).tolist(), accuracy=(correct.double() / n).tolist(),
                      correct=torch.cat(hits, dim=1),
                      dead_fraction=learner.dead_fraction(alive) if dead_units else None,
                      predictions=torch.cat(predicted, dim=1) if predictions else None)


@torch.no_grad()
def dead_unit_fraction(learner: Learner, x: torch.Tensor) -> list[float]:
    """Fraction of hidden units whose pre-activation is <= 0 for every sample of x (a dead ReLU)."""
    alive = None
    for start in range(0, x.shape[0], EVAL_CHUNK):
        xb = x[start:start + EVAL_CHUNK].unsqueeze(0).expand(learner.population, -1, -1)
        fired = learner.logits_and_activity(xb)[1]
        alive = fired if alive is None else alive | fired
    return learner.dead_fraction(alive)


def stacked_activity(z1: torch.Tensor) -> torch.Tensor:
    """bool [P, H]: the units of z1 [P, B, H] (members of one width) positive for some sample."""
    return (z1 > 0).any(dim=1)


def stacked_dead_fraction(alive: torch.Tensor) -> list[float]:
    """[P] from `stacked_activity` [P, H]: the fraction of each member's units never positive."""
    return (1.0 - alive.double().mean(dim=1)).tolist()
