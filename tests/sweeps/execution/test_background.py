"""The tracking thread of a sweep (sweeps/background.py): its order, and that it leaves training its cores."""

import os
import resource

import pytest
import torch

from fmnist_core.config import RunConfig
from fmnist_core.trainer import make_learner
from sweeps.execution.background import Background


@pytest.fixture
def two_threads():
    """Training on 2 torch threads, as on the 2-core CI machine; the count it had is put back after."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no OpenMP worker threads to share it")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_tracking_thread_runs_torch_on_one_thread_and_training_keeps_its_own(two_threads):
    background, seen = Background(), []
    background.submit(lambda: None)  # the thread starts with a job that runs no torch operation
    background.drain()
    torch.set_num_threads(2)  # set again meanwhile: torch hands it to threads at their first operation
    background.submit(lambda: seen.append(torch.get_num_threads()))
    background.drain()
    background.close()
    assert seen == [1] and torch.get_num_threads() == 2


def test_training_steps_do_not_wait_for_sleeping_workers_after_tracking_ran_torch(two_threads):
    """With a second thread that has run 2-thread operations alive, OpenMP had its workers sleep between
    operations (more workers than cores): a training step then blocked about 25 times (voluntary context
    switches), each a wake-up to wait for; spinning workers block close to never."""
    learner = make_learner([RunConfig(hidden_size=256)], torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 64, 784, generator=generator), torch.randint(0, 10, (1, 64), generator=generator)
    lr = torch.tensor([0.03])
    background = Background()
    background.submit(lambda: (torch.randn(512, 512) @ torch.randn(512, 512)).relu_())  # export-like work
    background.drain()
    steps = 200
    for _ in range(20):
        learner.train_step(x, y, lr)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    for _ in range(steps):
        learner.train_step(x, y, lr)
    blocked = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before
    background.close()
    assert blocked < steps, f"{blocked} voluntary context switches in {steps} steps"


def test_jobs_run_in_the_order_they_were_queued():
    background, done = Background(max_pending=2), []
    for number in range(20):  # more than max_pending: submit waits for a free slot
        background.submit(done.append, number)
    background.drain()
    background.close()
    assert done == list(range(20))
