"""The displays of console.py given fake trainer callbacks: a pack's lines in a log (no terminal), its bar
on a terminal with the total known from the start, and `train`'s bar."""

from __future__ import annotations

import io

import pytest

from fmnist_tracking import console
from fmnist_tracking.console import Outlook, PackProgress, duration, trials_label

pytestmark = pytest.mark.unit


def epoch_metrics(seconds: float, accuracies: list[float]) -> dict[int, dict[str, float]]:
    return {i: {"epoch_seconds": seconds, "val_acc": acc, "train_loss": 0.5}
            for i, acc in enumerate(accuracies)}


class Log(io.StringIO):
    """A log file: not a terminal; counts flushes (a line must reach the file at once)."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_in_a_log_a_pack_writes_a_line_at_its_start_and_one_per_epoch_flushed():
    log = Log()
    pack = PackProgress("hidden_size-manual", [0, 1, 2, 3, 4], epochs=2, steps_per_epoch=100, tty=False,
                        outlook=Outlook(queued_after=3, later_at_most=12), stream=log)
    pack.on_progress(50, 200)  # within an epoch: nothing in a log
    assert log.getvalue().count("\n") == 1 and log.flushes == 1
    pack.on_epoch_end(1, epoch_metrics(10.0, [0.85, 0.86, 0.87, 0.88, 0.8868]))
    pack.on_progress(150, 200)
    pack.on_epoch_end(2, epoch_metrics(12.0, [0.86, 0.87, 0.88, 0.89, 0.8901]))
    pack.close()
    start, first, second = log.getvalue().splitlines()
    assert log.flushes == 3
    assert start == ("hidden_size-manual: pack of 5 (trials 0-4) starts: 2 epochs of 100 steps; 3 more "
                     "trials queued in this round; later rounds: at most 12 trials")
    # after epoch 1: the pack needs one more epoch (10 s); a trial costs 2 x 10 / 5 = 4 s, so the round
    # has 10 + 3 x 4 = 22 s left, and the later rounds at most 12 trials, ~48 s at this pace
    assert first == ("hidden_size-manual: pack of 5 (trials 0-4), epoch 1/2: val_acc 0.8500-0.8868, 10.0 s; "
                     "pack ~10 s left; 3 more trials queued in this round, round ~22 s left; "
                     "later rounds: at most 12 trials (~48 s at this pace)")
    assert "epoch 2/2: val_acc 0.8600-0.8901, 12.0 s; pack ~0 s left" in second
    assert "round ~13 s left" in second  # 0 + 3 x (2 x 11 / 5)


def test_a_pack_line_says_when_members_stopped_and_when_nothing_bounds_the_sweep():
    log = Log()
    pack = PackProgress("search-manual", [7, 8, 9], epochs=3, steps_per_epoch=10, tty=False,
                        outlook=Outlook(later_at_most=None, round_name="sweep"), stream=log)
    pack.on_epoch_end(1, epoch_metrics(2.0, [0.5, 0.6]))  # one member pruned or diverged
    lines = log.getvalue().splitlines()
    assert lines[0].endswith("0 more trials queued in this sweep; later rounds: not bounded (a time budget)")
    assert "pack of 3 (trials 7-9), epoch 1/3: 2 of 3 training, val_acc 0.5000-0.6000, 2.0 s" in lines[1]


def test_on_a_terminal_the_bar_knows_its_total_from_the_start_and_moves_within_an_epoch():
    screen = io.StringIO()
    with PackProgress("hidden_size-manual", [0, 1], epochs=2, steps_per_epoch=100, tty=True,
                      outlook=Outlook(queued_after=2, later_at_most=4), stream=screen) as pack:
        assert pack.bar.total == 200 and pack.bar.n == 0
        pack.on_progress(50, 200)
        assert pack.bar.n == 50
        pack.on_epoch_end(1, epoch_metrics(20.0, [0.8, 0.9]))
        assert pack.bar.n == 100  # the epoch's last steps between two reports
        postfix = pack.bar.postfix
        assert "epochs done 1/2" in postfix and "val_acc 0.8000-0.9000" in postfix
        assert "round ~1 min 00 s" in postfix  # 20 s more of this pack + 2 trials x (2 x 20 / 2) s
        assert "later <= 4 trials" in postfix
    drawn = screen.getvalue()
    assert "0/200" in drawn and "starts:" not in drawn and "epoch 1/2:" not in drawn  # a bar, not lines


def test_train_shows_its_real_total_from_the_first_draw(monkeypatch, tiny_splits):
    from fmnist_core.config import RunConfig

    totals = []

    class Recording(console.tqdm):
        def __init__(self, *args, **kwargs):
            totals.append(kwargs["total"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(console, "tqdm", Recording)
    cfg = RunConfig(hidden_size=8, epochs=2, batch_size=32, device="cpu", val_size=len(tiny_splits.val_y))
    console.train_with_progress(cfg, tiny_splits)
    assert totals == [2 * -(-len(tiny_splits.train_y) // 32)]


@pytest.mark.parametrize("numbers, text", [([3], "(trial 3)"), ([4, 0, 1, 2, 3], "(trials 0-4)"),
                                           ([0, 1, 2, 7], "(trials 0-2, 7)")])
def test_trials_label(numbers, text):
    assert trials_label(numbers) == text


@pytest.mark.parametrize("seconds, text", [(44.6, "45 s"), (200, "3 min 20 s"), (3900, "1 h 05 min"),
                                           (float("nan"), "?")])
def test_duration(seconds, text):
    assert duration(seconds) == text
