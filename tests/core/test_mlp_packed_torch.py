"""A TorchLearner whose members differ in width packs them, and each member trains as it would alone.

Data: 1024 synthetic samples whose labels come from a random linear teacher, batch 32; the members
of one seed share its data order (one row of the packed layer), as the trainer hands them. Each
case trains the population once and every member alone (a 1-member TorchLearner: the stacked path)
on the same batches, in float64, and compares them.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from support import teacher_batches, teacher_dataset

from fmnist_core.config import RunConfig
from fmnist_core.learner import dead_unit_fraction, evaluate_learner
from fmnist_core.mlp_torch import TorchLearner, make_torch_learner

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

CPU = torch.device("cpu")
F64 = torch.float64
SAMPLES, BATCH, STEPS = 1024, 32, 200


DATA = teacher_dataset(SAMPLES, 4321)


def batch_stream(seeds: list[int], steps: int):
    """(x [P,B,784], y [P,B]) per step; each seed reshuffles DATA every epoch in its own order."""
    return teacher_batches(DATA, seeds, steps, BATCH)


def cosine_lrs(configs: list[RunConfig], steps: int) -> list[torch.Tensor]:
    """Each step's lr [P], a cosine from each member's peak, set by the test as the trainer would."""
    peak = torch.tensor([c.lr for c in configs])
    return [peak * 0.5 * (1 + math.cos(math.pi * step / steps)) for step in range(steps)]


def stacked(history: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([h[k] for h in history]) for k in history[0]}


def train(configs: list[RunConfig], steps: int = STEPS):
    """Per-step outputs stacked to [steps, P] and the learner after the last step."""
    learner = make_torch_learner(configs, CPU, dtype=F64)
    steps_in = zip(batch_stream([c.seed for c in configs], steps), cosine_lrs(configs, steps), strict=True)
    return stacked([learner.train_step(x, y, lr) for (x, y), lr in steps_in]), learner


def config(**overrides) -> RunConfig:
    base = RunConfig(impl="torch", hidden_size=16, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return dataclasses.replace(base, **overrides)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    scale = expected.abs().max().item()
    assert (actual.double() - expected.double()).abs().max().item() <= rel * scale


def weights(learner: TorchLearner, i: int) -> dict[str, torch.Tensor]:
    """Member i's weights at full precision (member_state is a float32 copy)."""
    return {k: v.detach().clone() for k, v in learner.members[i].state_dict().items()}


def assert_member_trains_alone(population, i: int, cfg: RunConfig, steps: int, rel: float = 1e-10) -> None:
    """Member i of a trained population = cfg trained alone: per-step statistics and final weights."""
    out, learner = population
    out_alone, alone = train([cfg], steps)
    for key in ("loss_sum", "grad_norm"):
        assert_rel_close(out[key][:, i], out_alone[key][:, 0], rel)
    for key in ("correct", "clipped"):
        assert torch.equal(out[key][:, i], out_alone[key][:, 0]), key
    for key, value in weights(alone, 0).items():
        assert_rel_close(weights(learner, i)[key], value, rel)
        torch.testing.assert_close(learner.member_state(i)[key], alone.member_state(0)[key])


def test_a_packed_member_is_the_model_trained_alone_float64():
    configs = [
        config(hidden_size=8, lr=0.05),
        config(hidden_size=16, lr=0.02, momentum=0.5, nesterov=False, weight_decay=1e-3, dropout=0.2,
               clip_mode="norm", clip_value=0.3),
        config(hidden_size=24, lr=0.1, weight_decay=0.0, clip_mode="value", clip_value=0.02,
               init="xavier_normal"),
    ]
    population = train(configs)
    learner = population[1]
    assert learner.packing is not None and len(learner.packing.rows) == 1  # one seed: one row, 48 units
    assert learner.packing.units == 48
    for i, cfg in enumerate(configs):
        assert_member_trains_alone(population, i, cfg, STEPS)
    losses = population[0]["loss_sum"][:, 0] / BATCH
    assert losses[-32:].mean() < 0.5 * losses[:32].mean()  # it learns the teacher
    assert 0 < population[0]["clipped"][:, 1].mean() <= 1 and population[0]["clipped"][:, 2].any()


def test_two_seed_rows_of_different_totals_are_padded_and_each_member_trains_alone():
    configs = [
        config(seed=0, hidden_size=8),
        config(seed=1, hidden_size=16, dropout=0.3, lr=0.03),
        config(seed=0, hidden_size=24, clip_mode="norm", clip_value=0.5),
        config(seed=1, hidden_size=8, optimizer="adamw", lr=1e-3, momentum=0.8, weight_decay=1e-2),
    ]
    steps = 80
    population = train(configs, steps)
    packing = population[1].packing
    assert packing.rows == [[0, 2], [1, 3]] and packing.units == 32  # row 1: 24 units + 8 pads
    for i, cfg in enumerate(configs):
        assert_member_trains_alone(population, i, cfg, steps)


def test_a_nan_member_reaches_no_other_member_before_and_after_it_is_frozen():
    """The trainer freezes a diverged member only at the end of the epoch: until then its NaN is in the
    packed forward; it must not reach the member that shares its row, forward or backward."""
    configs = [config(hidden_size=8, clip_mode="norm"), config(hidden_size=16)]
    learner = make_torch_learner(configs, CPU, dtype=F64)
    state = learner.member_state(0)
    state["fc1.weight"][0, 0] = state["fc2.weight"][3, 2] = float("nan")
    learner.load_member_state(0, state)
    history, steps = [], 8
    steps_in = zip(batch_stream([0, 0], steps), cosine_lrs(configs, steps), strict=True)
    for step, ((x, y), lr) in enumerate(steps_in):
        if step == 3:
            learner.freeze_member(0)
            frozen_state = learner.member_state(0)
        history.append(learner.train_step(x, y, lr))
    out = stacked(history)
    assert not out["loss_sum"][:, 0].isfinite().any() and not out["grad_norm"][:3, 0].isfinite().any()
    for key, value in learner.member_state(0).items():
        torch.testing.assert_close(value, frozen_state[key], rtol=0, atol=0, equal_nan=True)
    assert_member_trains_alone((out, learner), 1, configs[1], steps)
    x = DATA[0][:200].expand(2, -1, -1)
    assert learner.logits(x)[0].isnan().all() and learner.logits(x)[1].isfinite().all()


def test_dead_units_and_logits_of_a_packed_learner_are_those_of_each_member_alone():
    configs = [config(seed=0, hidden_size=8, init="zeros"), config(seed=0, hidden_size=16),
               config(seed=1, hidden_size=32)]  # zeros: every unit dead, others not; row 0 padded to 32
    steps = 20
    _, learner = train(configs, steps)
    x, y = DATA[0][:300], DATA[1][:300]
    xs = x.expand(3, -1, -1)
    logits, fired = learner.logits_and_activity(xs)
    assert fired.shape == (2, 32) and torch.equal(logits, learner.logits(xs))
    preactivations = learner.hidden_preactivations(xs)  # [P, B, Hmax]
    dead = learner.dead_fraction(fired)
    for i, cfg in enumerate(configs):
        _, alone = train([cfg], steps)
        alone_logits, alone_fired = alone.logits_and_activity(x.unsqueeze(0))
        assert_rel_close(logits[i], alone_logits[0], 1e-10)
        alone_z1 = alone.hidden_preactivations(x.unsqueeze(0))[0]
        assert_rel_close(preactivations[i, :, :cfg.hidden_size], alone_z1, 1e-10)
        assert not preactivations[i, :, cfg.hidden_size:].any()  # zeros after the member's own units
        assert dead[i] == alone.dead_fraction(alone_fired)[0]
    assert dead[0] == 1.0 and dead[1] < 1.0 and dead[2] < 1.0
    together = evaluate_learner(learner, x, y, dead_units=True)
    assert together.dead_fraction == dead_unit_fraction(learner, x) == dead


def test_members_of_one_width_are_stacked_and_mixed_activations_are_refused():
    assert make_torch_learner([config(seed=0), config(seed=1)], CPU).packing is None
    with pytest.raises(ValueError, match="share activation"):
        make_torch_learner([config(hidden_size=8), config(hidden_size=16, activation="tanh")], CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the sync-free step is the accelerator's path")
@pytest.mark.parametrize("layout", ["packed", "stacked"])
def test_a_cuda_step_never_waits_for_the_device(layout):
    """On CUDA the fused kernels read each member's lr on the device and nothing else in the step syncs:
    under set_sync_debug_mode("error") any sync raises. The members without dropout (CUDA draws other
    masks than the CPU) also end where the same run on the CPU ends: the device lr is the lr."""
    cuda = torch.device("cuda")
    configs = {
        "packed": [config(hidden_size=8, dropout=0.2),
                   config(hidden_size=16, optimizer="adamw", lr=1e-3, clip_mode="value", clip_value=0.02),
                   config(seed=1, hidden_size=24, clip_mode="norm", clip_value=0.3)],
        "stacked": [config(seed=0, dropout=0.2), config(seed=1, optimizer="adam", lr=1e-3),
                    config(seed=2, clip_mode="norm", clip_value=0.3)],
    }[layout]
    on_cuda = make_torch_learner(configs, cuda, dtype=F64)
    on_cpu = make_torch_learner(configs, CPU, dtype=F64)
    assert on_cuda.lr_on_device and (on_cuda.packing is None) == (layout == "stacked")
    steps = list(zip(batch_stream([c.seed for c in configs], 5), cosine_lrs(configs, 5), strict=True))
    for (x, y), lr in steps:
        on_cpu.train_step(x, y, lr)
    device_steps = [(x.to(cuda), y.to(cuda), lr.to(cuda)) for (x, y), lr in steps]
    on_cuda.train_step(*device_steps[0])  # the first step also creates the optimizer state
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y, lr in device_steps[1:]:
            on_cuda.train_step(x, y, lr)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for i, cfg in enumerate(configs):
        if cfg.dropout == 0:
            for key, value in on_cpu.member_state(i).items():
                torch.testing.assert_close(on_cuda.member_state(i)[key], value, rtol=1e-6, atol=1e-9)
