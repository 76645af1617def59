"""torch's thread count on a busy CPU (threads.py): the count for a load, the chooser's looks at /proc/stat
through fake readers and a fake clock, $FMNIST_THREADS, and that the count never changes what is trained."""

from __future__ import annotations

import pytest
import torch
from support import synthetic_splits

from fmnist_core import threads
from fmnist_core.config import ConfigError, RunConfig
from fmnist_core.threads import Reading, ThreadChooser, others_load, threads_for
from fmnist_core.trainer import train_population

pytestmark = pytest.mark.unit


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_earlier_reading(monkeypatch):
    monkeypatch.setattr(ThreadChooser, "_last", None)
    monkeypatch.delenv(threads.ENV_VAR, raising=False)


@pytest.mark.parametrize("ceiling, cpus, others, expected", [
    (2, 2, 0.0, 2),  # quiet: every core
    (2, 2, 0.3, 2),  # a little work elsewhere: not a busy core
    (2, 2, 0.67, 1),  # a busy process sharing the cores with this one's two threads gets 2/3 of one
    (2, 2, 1.0, 1),
    (2, 2, 5.0, 1),  # never fewer than one
    (4, 8, 1.0, 4),  # torch's own count (the physical cores) stays the ceiling
    (8, 8, 2.6, 5),
])
def test_one_thread_fewer_for_each_core_others_keep_busy(ceiling, cpus, others, expected):
    assert threads_for(ceiling, cpus, others) == expected


def test_the_others_load_is_the_cpus_busy_time_less_this_process_own():
    before, after = Reading(at=10.0, busy=100.0, own=50.0), Reading(at=12.0, busy=103.0, own=51.0)
    assert others_load(before, after) == pytest.approx(1.0)  # (3 - 1) CPU seconds in 2 s
    assert others_load(after, after) == 0.0


def test_busy_seconds_come_from_the_allowed_cpus_of_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  300 0 30 600 10 0 0 5 0 0\n"
                    "cpu0 100 0 10 300 5 0 0 0 0 0\n"
                    "cpu1 200 0 20 300 5 0 0 5 0 0\n"
                    "intr 12345\n")
    ticks = threads._CLOCK_TICKS
    assert threads.cpu_busy_seconds({1}, str(stat)) == pytest.approx(225 / ticks)  # user+system+steal
    assert threads.cpu_busy_seconds({0, 1}, str(stat)) == pytest.approx(335 / ticks)
    assert threads.cpu_busy_seconds({0}, str(tmp_path / "missing")) is None


class Machine:
    """A fake clock and /proc/stat: `others` cores busy elsewhere, `own` used by this process."""

    def __init__(self):
        self.now, self.busy, self.own, self.others, self.reads = 100.0, 0.0, 0.0, 0.0, 0

    def advance(self, seconds: float, own_cores: float = 0.0) -> None:
        self.now += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + self.others) * seconds

    def read_busy(self, cpus):
        self.reads += 1
        return self.busy

    def chooser(self) -> ThreadChooser:
        return ThreadChooser(read_busy=self.read_busy, read_own=lambda: self.own, clock=lambda: self.now,
                             sleep=self.advance, cpus={0, 1})


@pytest.mark.usefixtures("two_torch_threads")
def test_the_chooser_looks_briefly_at_the_start_then_every_window_and_restores_the_count():
    machine = Machine()
    machine.others = 1.0  # another process holds a core
    chooser = machine.chooser()
    assert chooser.threads == 1 and torch.get_num_threads() == 1  # a first look of FIRST_LOOK_SECONDS
    machine.others = 0.0  # it ended
    machine.advance(1.0, own_cores=1.0)
    reads = machine.reads
    assert chooser.check() == 1 and machine.reads == reads  # within the window: only the clock is read
    machine.advance(threads.WINDOW_SECONDS, own_cores=1.0)
    assert chooser.check() == 2  # its own work is not counted as others'
    machine.others = 1.0
    machine.advance(threads.WINDOW_SECONDS, own_cores=2 * 2 / 3)  # sharing: the other gets 2/3 of a core
    machine.others = 2 / 3
    machine.advance(threads.WINDOW_SECONDS, own_cores=4 / 3)
    assert chooser.check() == 1
    assert chooser.choices == [1, 2, 1]
    chooser.restore()
    assert torch.get_num_threads() == 2


@pytest.mark.usefixtures("two_torch_threads")
def test_fmnist_threads_fixes_the_count_and_a_bad_value_is_refused(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "1")
    with threads.chosen_threads(torch.device("cpu")) as chooser:
        assert torch.get_num_threads() == 1 and chooser.check() == 1
    assert torch.get_num_threads() == 2
    monkeypatch.setenv(threads.ENV_VAR, "many")
    with pytest.raises(ConfigError, match="FMNIST_THREADS"), threads.chosen_threads(torch.device("cpu")):
        pass


@pytest.mark.usefixtures("two_torch_threads")
@pytest.mark.parametrize("impl", ["manual", "torch"])
def test_the_thread_count_does_not_change_what_is_trained(monkeypatch, impl):
    """The chooser may change the count between any two steps: results must not depend on it."""
    splits = synthetic_splits(512, 64, 64, seed=1)
    configs = [RunConfig(impl=impl, hidden_size=h, epochs=1, batch_size=64, val_size=64, device="cpu")
               for h in (256, 1024)]
    states = {}
    for count in ("1", "2"):
        monkeypatch.setenv(threads.ENV_VAR, count)
        states[count] = [r.best_state for r in train_population(configs, splits)]
    for one, two in zip(states["1"], states["2"], strict=True):
        assert all(torch.equal(one[name], two[name]) for name in one)
