"""Learning-rate tables: shapes, endpoints and warm-up of each schedule."""

import math

import pytest

from fmnist_core.config import RunConfig
from fmnist_core.schedules import lr_table


def test_constant_schedule_keeps_the_learning_rate():
    table = lr_table(RunConfig(schedule="constant", lr=0.1, epochs=2), steps_per_epoch=5)
    assert table.shape == (10,)
    assert table.tolist() == pytest.approx([0.1] * 10)


def test_cosine_starts_at_the_peak_and_ends_near_zero():
    table = lr_table(RunConfig(schedule="cosine", lr=0.1, epochs=2), steps_per_epoch=50)
    assert table[0] == pytest.approx(0.1)
    assert table[50] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 50 / 100)))
    assert table[-1] < 1e-3


def test_step_schedule_decays_every_step_size_epochs():
    cfg = RunConfig(schedule="step", lr=1.0, epochs=4, step_size=2, step_gamma=0.5)
    table = lr_table(cfg, steps_per_epoch=3)
    assert table.tolist() == pytest.approx([1.0] * 6 + [0.5] * 6)


def test_onecycle_rises_to_the_peak_then_falls():
    table = lr_table(RunConfig(schedule="onecycle", lr=0.2, epochs=10), steps_per_epoch=10)
    peak = int(table.argmax())
    assert table[0] == pytest.approx(0.2 / 25)
    assert table[peak] == pytest.approx(0.2, rel=1e-3)
    assert 0.25 * 100 <= peak <= 0.35 * 100
    assert table[-1] < table[0]


def test_warmup_ramps_linearly_before_the_main_schedule():
    table = lr_table(RunConfig(schedule="constant", lr=0.1, epochs=2, warmup_epochs=1.0), steps_per_epoch=4)
    assert table[:4].tolist() == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert table[4:].tolist() == pytest.approx([0.1] * 4)
