"""A packed member of the hand-written learner is the model trained alone.

PackedManualLearner trains members of different widths as one model (one first-layer product per
data seed, each member's output from its own block of hidden units). Each test trains the pack and
each member alone (ManualLearner, one member) on the same batches and compares them in float64.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support import synthetic_splits

from fmnist_core import trainer
from fmnist_core.config import RunConfig
from fmnist_core.learner import dead_unit_fraction, evaluate_learner
from fmnist_core.mlp_manual import ManualLearner, PackedManualLearner, make_manual_learner

CPU, F64 = torch.device("cpu"), torch.float64
BATCH = 32

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: see tests/core/conftest.py


def config(**overrides) -> RunConfig:
    base = RunConfig(hidden_size=16, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return dataclasses.replace(base, **overrides)


def batches(seeds: list[int], steps: int):
    """(x [P, B, 784], y [P, B]) per step: one random batch per distinct seed, the same rows for
    members of one seed (as the trainer hands them), labels from a fixed linear teacher."""
    teacher = torch.randn(784, 10, generator=torch.Generator().manual_seed(99), dtype=F64)
    streams = {s: torch.Generator().manual_seed(1000 + s) for s in sorted(set(seeds))}
    for _ in range(steps):
        rows = {s: torch.randn(BATCH, 784, generator=g, dtype=F64) for s, g in streams.items()}
        x = torch.stack([rows[s] for s in seeds])
        yield x, (x @ teacher).argmax(-1)


def train_pack_and_alone(configs: list[RunConfig], steps: int, lr_scale=lambda step: 1.0):
    """The pack and one ManualLearner per member, stepped on the same batches; per-step outputs."""
    pack = make_manual_learner(configs, CPU, dtype=F64)
    alone = [make_manual_learner([c], CPU, dtype=F64) for c in configs]
    outputs = {"pack": [], "alone": []}
    for step, (x, y) in enumerate(batches([c.seed for c in configs], steps)):
        lr = torch.tensor([c.lr for c in configs], dtype=F64) * lr_scale(step)
        outputs["pack"].append(pack.train_step(x, y, lr))
        outputs["alone"].append([a.train_step(x[i:i + 1], y[i:i + 1], lr[i:i + 1])
                                 for i, a in enumerate(alone)])
    return pack, alone, outputs


def assert_member_is_alone(pack, alone, outputs, i: int, rel: float = 1e-10) -> None:
    for packed_step, alone_steps in zip(outputs["pack"], outputs["alone"], strict=True):
        for key, value in alone_steps[i].items():
            got = packed_step[key][i:i + 1].double()
            assert torch.allclose(got, value.double(), rtol=rel, atol=1e-12), key
    state, expected = pack.member_state(i), alone[i].member_state(0)
    for key, value in expected.items():
        assert torch.allclose(state[key], value, rtol=rel, atol=1e-12), key


MIXED = [
    config(hidden_size=8, lr=0.05),
    config(hidden_size=24, lr=0.02, nesterov=False, momentum=0.5, dropout=0.2, weight_decay=1e-3),
    config(hidden_size=16, lr=0.1, clip_mode="norm", clip_value=0.3, init="xavier_normal"),
    config(hidden_size=24, lr=0.08, clip_mode="value", clip_value=0.01),
]


def test_each_packed_member_trains_as_it_would_alone_float64():
    pack, alone, outputs = train_pack_and_alone(MIXED, 200, lr_scale=lambda step: 1 - step / 200)
    assert isinstance(pack, PackedManualLearner) and all(isinstance(a, ManualLearner) for a in alone)
    assert pack.layout.rows == 1 and pack.layout.widths == [8, 16, 24, 24]  # one row: one input product
    for i in range(len(MIXED)):
        assert_member_is_alone(pack, alone, outputs, i)
    clipped = torch.stack([step["clipped"] for step in outputs["pack"]])
    assert clipped[:, 2].any() and clipped[:, 3].any() and not clipped[:, :2].any()
    losses = torch.stack([step["loss_sum"] for step in outputs["pack"]]) / BATCH
    assert (losses[-20:].mean(0) < losses[:20].mean(0)).all()  # every member learns the teacher


def test_rows_of_other_seeds_are_packs_of_their_own_batched_together_and_padding_stays_zero():
    """Seeds 0 and 1 see different batches: two rows of one product each. Row 1 lacks the 8-unit
    member, so its block is padding; with sigmoid (act(0) = 0.5) the padding does get gradients, and
    must still neither move nor reach a member."""
    configs = [config(hidden_size=8, seed=0, activation="sigmoid"),
               config(hidden_size=16, seed=0, activation="sigmoid", lr=0.2),
               config(hidden_size=16, seed=1, activation="sigmoid", lr=0.3, nesterov=False)]
    pack, alone, outputs = train_pack_and_alone(configs, 120)
    assert (pack.layout.rows, pack.layout.widths) == (2, [8, 16])
    for i in range(len(configs)):
        assert_member_is_alone(pack, alone, outputs, i)
    padding = slice(0, 8)  # row 1, block 0
    assert not pack.params["W1"][1, padding].any() and not pack.params["W2"][1, padding].any()
    assert not pack.params["b1"][1, :, padding].any() and not pack.params["b2"][1, 0].any()


def test_a_member_that_diverged_is_frozen_alone_and_nothing_of_it_reaches_the_others():
    pack = make_manual_learner(MIXED[:3], CPU, dtype=F64)
    alone = [make_manual_learner([c], CPU, dtype=F64) for c in MIXED[:3]]
    broken = {key: torch.full_like(value, float("nan")) for key, value in pack.member_state(1).items()}
    pack.load_member_state(1, broken)
    pack.freeze_member(1)
    for x, y in batches([0, 0, 0], 30):
        lr = torch.tensor([c.lr for c in MIXED[:3]], dtype=F64)
        out = pack.train_step(x, y, lr)
        assert torch.isnan(out["loss_sum"][1]) and torch.isfinite(out["loss_sum"][[0, 2]]).all()
        for i in (0, 2):
            alone[i].train_step(x[i:i + 1], y[i:i + 1], lr[i:i + 1])
    for i in (0, 2):
        for key, value in alone[i].member_state(0).items():
            assert torch.allclose(pack.member_state(i)[key], value, rtol=1e-10, atol=1e-12)
    assert all(torch.isnan(v).all() for v in pack.member_state(1).values())  # frozen: never updated
    logits = pack.logits(next(batches([0, 0, 0], 1))[0])
    assert torch.isfinite(logits[[0, 2]]).all()


def test_evaluation_and_dead_units_of_a_pack_are_those_of_each_member_alone():
    configs = [config(hidden_size=8, init="zeros"), config(hidden_size=24), config(hidden_size=16, seed=3)]
    pack = make_manual_learner(configs, CPU, dtype=F64)
    alone = [make_manual_learner([c], CPU, dtype=F64) for c in configs]
    x, y = next(batches([0], 1))
    x, y = x[0].repeat(10, 1), y[0].repeat(10)  # 320 images: more than one chunk is not needed here
    packed = evaluate_learner(pack, x, y, dead_units=True)
    assert packed.dead_fraction == dead_unit_fraction(pack, x)
    assert packed.dead_fraction[0] == 1.0 and packed.dead_fraction[1] < 1.0
    for i, single in enumerate(alone):
        own = evaluate_learner(single, x, y, dead_units=True)
        assert packed.loss[i] == pytest.approx(own.loss[0], rel=1e-12)
        assert packed.accuracy[i] == own.accuracy[0] and packed.dead_fraction[i] == own.dead_fraction[0]
        assert torch.equal(packed.correct[i], own.correct[0])


def test_a_pack_refuses_mixed_activations_and_loads_only_states_of_its_members_widths():
    with pytest.raises(ValueError, match="activation"):
        PackedManualLearner([config(hidden_size=8), config(hidden_size=16, activation="tanh")], CPU, F64)
    pack = make_manual_learner([config(hidden_size=8), config(hidden_size=16)], CPU, dtype=F64)
    with pytest.raises(ValueError, match="fc1.weight: expected shape"):
        pack.load_member_state(0, pack.member_state(1))


def test_the_trainer_packs_widths_and_each_result_matches_the_run_alone():
    """train_population with three widths gives each member the history of its run alone, in float32
    (the packed products sum in another order: agreement to float32 rounding, not bit for bit)."""
    splits = synthetic_splits()
    configs = [RunConfig(hidden_size=h, epochs=2, batch_size=64, val_size=128) for h in (8, 32, 16)]
    packed = trainer.train_population(configs, splits)
    for cfg, result in zip(configs, packed, strict=True):
        alone = trainer.train(cfg, splits)
        assert result.best_epoch == alone.best_epoch
        for got, expected in zip(result.history, alone.history, strict=True):
            assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-4)
            assert abs(got["val_acc"] - expected["val_acc"]) <= 2 / 128  # at most 2 images of 128
        assert result.test_acc == pytest.approx(alone.test_acc, abs=2 / 128)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the host syncs it counts are CUDA's")
def test_a_manual_step_on_cuda_never_waits_for_the_device():
    """No .item(), .tolist() or data-dependent branch inside a step, stacked or packed: the host queues
    the work and moves on (torch raises on any synchronising call in "error" mode)."""
    device = torch.device("cuda")
    for configs in ([config(), config(seed=1, clip_mode="norm")], MIXED):
        learner = make_manual_learner(configs, device)
        x, y = next(batches([c.seed for c in configs], 1))
        x, y = x.to(device, torch.float32), y.to(device)
        lr = torch.full((len(configs),), 0.05, device=device)
        learner.train_step(x, y, lr)  # the first step may allocate and set up lazily
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                learner.train_step(x, y, lr)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_padding_cells_get_no_gradient():
    """A block without a member in some row is padding: its logits carry no loss, so every gradient of
    its weights is zero (whatever the activation gives its units)."""
    configs = [config(hidden_size=8, seed=0, activation="sigmoid"),
               config(hidden_size=16, seed=0, activation="sigmoid"),
               config(hidden_size=16, seed=1, activation="sigmoid")]
    pack = make_manual_learner(configs, CPU, dtype=F64)
    x, y = next(batches([c.seed for c in configs], 1))
    pack.train_step(x, y, torch.full((3,), 0.1, dtype=F64))
    grads = pack.layout.views(pack.model.gradients)
    padding = slice(0, 8)  # row 1, block 0
    assert not grads["W1"][1, padding].any() and not grads["W2"][1, padding].any()
    assert not grads["b1"][1, :, padding].any() and not grads["b2"][1, 0].any()
    assert grads["W1"][0, padding].any() and grads["W2"][1, 8:].any()  # the members' own do move
