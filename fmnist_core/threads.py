"""How many threads torch trains with on a CPU: the CPUs this process may use less those other processes keep
busy, looked at again every few seconds while it trains.

Why: torch runs one intra-op thread per core, and every parallel operation waits for its slowest thread.
When another process holds one of two cores, the thread that shares that core runs at a fraction of its
speed and holds back the other: the main job's pack of five widths measured 10 s an epoch quiet and 43 s
with one core busy, not the 2x that losing half the machine would cost. With one thread fewer than busy
cores free, a busy core costs about its share (bench/speed.py --only busy measures it).

The load of the others is read from Linux's /proc/stat (busy time of each CPU in this process's affinity
mask) less this process's own CPU time (os.times, all its threads) over the same window: no sampling
thread, no pause after the first look. A core counts as busy when the others used at least half of it.
Elsewhere (no /proc/stat) torch's own choice is kept. $FMNIST_THREADS=N fixes the count (bench/speed.py
uses it to compare); `auto` or unset chooses.

The count does not change results: torch splits a product or a reduction between threads by output
blocks, so 1 and 2 threads train bit-identical weights here (tests/core/test_threads.py checks it).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from fmnist_core.config import ConfigError

ENV_VAR = "FMNIST_THREADS"
WINDOW_SECONDS = 2.0  # the shortest window the load is averaged over before the count may change
FIRST_LOOK_SECONDS = 0.1  # the first look of a process: how long it waits to see what the others do
BUSY_SHARE = 0.5  # a core counts as busy when the other processes used at least this share of it
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where there is no such call)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def cpu_busy_seconds(cpus: set[int], path: str = "/proc/stat") -> float | None:
    """CPU seconds spent busy (anything but idle and iowait; steal included: the host took the core) by the
    CPUs `cpus` since boot; None where /proc/stat cannot be read."""
    try:
        with open(path) as stat:
            lines = stat.read().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        ticks += sum(values) - values[3] - values[4]
    return ticks / _CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU seconds this process used, all its threads."""
    times = os.times()
    return times.user + times.system


@dataclass
class Reading:
    at: float  # time.monotonic()
    busy: float  # cpu_busy_seconds of the allowed CPUs
    own: float  # own_cpu_seconds


def others_load(before: Reading, after: Reading) -> float:
    """The cores' worth of CPU the other processes used between two readings."""
    elapsed = after.at - before.at
    if elapsed <= 0:
        return 0.0
    return max(0.0, ((after.busy - before.busy) - (after.own - before.own)) / elapsed)


def threads_for(ceiling: int, cpus: int, others: float) -> int:
    """Threads for a process allowed `cpus` CPUs, at most `ceiling`, while the others keep `others` cores
    busy: one fewer for each core they use at least BUSY_SHARE of, never fewer than one."""
    busy = int(others + (1 - BUSY_SHARE))  # rounded, half up
    return max(1, min(ceiling, cpus - busy))


class ThreadChooser:
    """Sets torch's thread count while a CPU training runs (`check`, called often: it looks at the load only
    once a window has passed) and puts the count it found back at the end (`restore`)."""

    _last: Reading | None = None  # the process's latest reading: the next window starts there

    def __init__(self, fixed: int | None = None, *,
                 read_busy: Callable[[set[int]], float | None] = cpu_busy_seconds,
                 read_own: Callable[[], float] = own_cpu_seconds, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, cpus: set[int] | None = None) -> None:
        self.initial = torch.get_num_threads()
        self.cpus = allowed_cpus() if cpus is None else cpus
        self.ceiling = min(self.initial, len(self.cpus))
        self.fixed, self.read_busy, self.read_own = fixed, read_busy, read_own
        self.clock, self.sleep = clock, sleep
        self.threads = self.initial
        self.choices: list[int] = []  # every count set, in order (bench, tests)
        if fixed is not None:
            self._set(fixed)
        elif self.ceiling > 1:
            self.check(first=True)

    def _read(self) -> Reading | None:
        busy = self.read_busy(self.cpus)
        return None if busy is None else Reading(self.clock(), busy, self.read_own())

    def check(self, first: bool = False) -> int:
        """Look at the others' load if a window has passed (or, `first`, since the process's last reading or
        over FIRST_LOOK_SECONDS) and set the thread count it calls for; returns the count in use."""
        if self.fixed is not None or self.ceiling <= 1:
            return self.threads
        last = ThreadChooser._last
        if not first and last is not None and self.clock() - last.at < WINDOW_SECONDS:
            return self.threads  # the common case, called every few steps: one clock read
        now = self._read()
        if now is None:  # no /proc/stat: torch's own choice stays
            return self.threads
        if last is None or (first and now.at - last.at > 10 * WINDOW_SECONDS):
            # no recent reading to compare with: a short look now (a long-past one would average an old load)
            ThreadChooser._last = now
            self.sleep(FIRST_LOOK_SECONDS)
            last, now = now, self._read()
        elif now.at - last.at < FIRST_LOOK_SECONDS:  # a training just before this one looked
            return self.threads
        ThreadChooser._last = now
        self._set(threads_for(self.ceiling, len(self.cpus), others_load(last, now)))
        return self.threads

    def _set(self, threads: int) -> None:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        if not self.choices or self.choices[-1] != threads:
            self.choices.append(threads)
        self.threads = threads

    def restore(self) -> None:
        if torch.get_num_threads() != self.initial:
            torch.set_num_threads(self.initial)


def fixed_threads() -> int | None:
    """$FMNIST_THREADS as a count; None for `auto` or unset."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower()
    if value in ("", "auto"):
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"${ENV_VAR} must be a positive number of threads or `auto`, got {value!r}")
    return count


@contextlib.contextmanager
def chosen_threads(device: torch.device) -> Iterator[ThreadChooser | None]:
    """While a training on `device` runs: a ThreadChooser on a CPU (None on an accelerator, where the host's
    threads only feed it); torch's count is put back afterwards."""
    if device.type != "cpu":
        yield None
        return
    chooser = ThreadChooser(fixed_threads())
    try:
        yield chooser
    finally:
        chooser.restore()
