"""Manual and torch implementations train the same run; a population trains like its members alone.

Data: 2048 synthetic samples whose labels come from a random linear teacher, batch 64,
each member with its own seeded order. The lr follows a cosine per step, set by the test as
the trainer would.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from support import teacher_batches, teacher_dataset

from fmnist_core.config import RunConfig
from fmnist_core.mlp_manual import make_manual_learner
from fmnist_core.mlp_torch import TorchMLP, make_torch_learner

CPU = torch.device("cpu")
F64 = torch.float64
SAMPLES, BATCH, STEPS = 2048, 64, 300
LEARNERS = {"manual": make_manual_learner, "torch": make_torch_learner}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: see tests/core/conftest.py


DATA = teacher_dataset(SAMPLES, 1234)


def batch_stream(seeds: list[int], steps: int):
    """(x [P,B,784], y [P,B]) per step; each seed reshuffles DATA every epoch in its own order."""
    return teacher_batches(DATA, seeds, steps, BATCH)


def train(impl: str, configs: list[RunConfig], steps: int = STEPS, dtype=F64):
    """Per-step outputs stacked to [steps, P] and the learner after the last step."""
    learner = LEARNERS[impl](configs, CPU, dtype=dtype)
    peak = torch.tensor([c.lr for c in configs])
    history = []
    for step, (x, y) in enumerate(batch_stream([c.seed for c in configs], steps)):
        lr = peak * 0.5 * (1 + math.cos(math.pi * step / steps))
        history.append(learner.train_step(x, y, lr))
    return {k: torch.stack([h[k] for h in history]) for k in history[0]}, learner


def config(**overrides) -> RunConfig:
    base = RunConfig(hidden_size=32, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return dataclasses.replace(base, **overrides)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    scale = expected.abs().max().item()
    assert (actual.double() - expected.double()).abs().max().item() <= rel * scale


def assert_same_run(a, b, rel: float, members=None) -> None:
    (out_a, learner_a), (out_b, learner_b) = a, b
    for key in ("loss_sum", "grad_norm"):
        assert_rel_close(out_a[key], out_b[key], rel)
    assert torch.equal(out_a["correct"], out_b["correct"])
    assert torch.equal(out_a["clipped"], out_b["clipped"])
    for i, j in members or [(i, i) for i in range(learner_a.population)]:
        state_a, state_b = learner_a.member_state(i), learner_b.member_state(j)
        for key in state_a:
            assert_rel_close(state_a[key], state_b[key], rel)


PARITY_CASES = {
    "sgd_nesterov_wd": config(),
    "clip_norm": config(clip_mode="norm", clip_value=0.5, nesterov=False),
    "clip_value_dropout_tanh": config(clip_mode="value", clip_value=0.02, dropout=0.3, activation="tanh"),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_manual_and_torch_give_the_same_run_float64(case):
    cfg = PARITY_CASES[case]
    manual, torch_run = train("manual", [cfg]), train("torch", [cfg])
    assert_same_run(manual, torch_run, 1e-9)
    losses = manual[0]["loss_sum"][:, 0] / BATCH
    assert losses[-32:].mean() < 0.5 * losses[:32].mean()  # it learns the teacher
    if cfg.clip_mode != "none":
        assert 0 < manual[0]["clipped"].mean() < 1 or manual[0]["clipped"].all()


def test_manual_and_torch_agree_in_float32():
    cfg = PARITY_CASES["clip_norm"]
    manual = train("manual", [cfg], dtype=torch.float32)
    torch_run = train("torch", [cfg], dtype=torch.float32)
    assert_rel_close(manual[0]["loss_sum"], torch_run[0]["loss_sum"], 1e-4)
    for key, value in manual[1].member_state(0).items():
        assert_rel_close(value, torch_run[1].member_state(0)[key], 1e-4)


@pytest.mark.parametrize("impl", list(LEARNERS))
def test_population_trains_like_each_member_alone(impl):
    configs = [
        config(seed=0, lr=0.05),
        config(seed=1, lr=0.02, nesterov=False, momentum=0.5, dropout=0.2),
        config(seed=2, lr=0.1, clip_mode="norm", clip_value=0.3, init="xavier_normal"),
    ]
    steps = 100
    population = train(impl, configs, steps)
    for i, cfg in enumerate(configs):
        alone = train(impl, [cfg], steps)
        member_out = {k: v[:, i:i + 1] for k, v in population[0].items()}
        assert_same_run((member_out, population[1]), alone, 1e-9, members=[(i, 0)])


def test_torch_adam_member_matches_plain_torch_optim_adam():
    cfg = config(impl="torch", optimizer="adamw", lr=1e-3, momentum=0.8, weight_decay=1e-2,
                 clip_mode="value", clip_value=0.05)
    steps = 40
    _, learner = train("torch", [config(seed=3, lr=0.05), cfg], steps)
    model = TorchMLP.from_state_dict(make_torch_learner([cfg], CPU).member_state(0), dtype=F64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.999), weight_decay=1e-2)
    for step, (x, y) in enumerate(batch_stream([3, cfg.seed], steps)):
        optimizer.param_groups[0]["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[1].double()), y[1]).backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.05)
        optimizer.step()
    for key, value in model.state_dict().items():
        assert_rel_close(learner.member_state(1)[key], value, 1e-6)  # member_state is float32


def test_eval_paths_agree_and_checkpoints_load_into_torch_mlp():
    configs = [config(seed=0, dropout=0.5), config(seed=4, init="lecun_normal")]
    (_, manual), (_, torch_learner) = train("manual", configs, 20), train("torch", configs, 20)
    x = DATA[0][:100].expand(2, 100, 784)
    assert_rel_close(manual.logits(x), torch_learner.logits(x), 1e-9)
    assert_rel_close(manual.hidden_preactivations(x), torch_learner.hidden_preactivations(x), 1e-9)
    assert manual.hidden_preactivations(x).shape == (2, 100, 32)
    for i in range(2):
        model = TorchMLP.from_state_dict(manual.member_state(i), "relu", 0.5).eval()
        assert set(model.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
        with torch.no_grad():
            assert_rel_close(model(x[i]), manual.logits(x)[i], 1e-5)  # float32 checkpoint
        torch_learner.load_member_state(i, manual.member_state(i))
    assert_rel_close(torch_learner.logits(x), manual.logits(x), 1e-6)


@pytest.mark.parametrize("impl", LEARNERS)
def test_validation_with_dead_units_is_one_pass_of_the_same_values(impl):
    """The trainer's validation takes logits and dead units from one forward: the same numbers, bit for
    bit, as learner.logits and a separate dead_unit_fraction pass."""
    from fmnist_core.learner import dead_unit_fraction, evaluate_learner

    configs = [config(seed=0, init="zeros"), config(seed=4)]  # zeros: every unit dead, others not
    _, learner = train(impl, configs, 20)
    x, y = DATA[0][:300], DATA[1][:300]
    logits, fired = learner.logits_and_activity(x.expand(2, -1, -1))
    assert torch.equal(logits, learner.logits(x.expand(2, -1, -1)))
    assert torch.equal(fired, (learner.hidden_preactivations(x.expand(2, -1, -1)) > 0).any(dim=1))
    together, alone = evaluate_learner(learner, x, y, dead_units=True), evaluate_learner(learner, x, y)
    assert together.dead_fraction == dead_unit_fraction(learner, x)
    assert together.dead_fraction[0] == 1.0 and together.dead_fraction[1] < 1.0
    assert (together.loss, together.accuracy) == (alone.loss, alone.accuracy) and alone.dead_fraction is None
    assert torch.equal(together.correct, alone.correct)


def test_torch_learner_isolates_nan_and_freezes():
    configs = [config(seed=0, clip_mode="norm"), config(seed=1)]
    clean, poisoned = make_torch_learner(configs, CPU), make_torch_learner(configs, CPU)
    state = poisoned.member_state(0)
    state["fc1.weight"][0, 0] = float("nan")
    poisoned.load_member_state(0, state)
    lr = torch.tensor([0.05, 0.05])
    for step, (x, y) in enumerate(batch_stream([0, 1], 6)):
        if step == 3:
            poisoned.freeze_member(0)
            frozen_state = poisoned.member_state(0)
        out_clean, out_poisoned = clean.train_step(x, y, lr), poisoned.train_step(x, y, lr)
        for key in out_clean:
            assert torch.equal(out_clean[key][1], out_poisoned[key][1]), key
    for key, value in poisoned.member_state(0).items():
        torch.testing.assert_close(value, frozen_state[key], rtol=0, atol=0, equal_nan=True)
    assert all(torch.equal(clean.member_state(1)[k], v) for k, v in poisoned.member_state(1).items())
