"""The tracking thread of a sweep (sweeps/background.py): its order, and that it leaves training its cores
(that training then does not wait for sleeping OpenMP workers: test_background_threads.py, integration)."""

import torch

from sweeps.execution.background import Background


def test_the_tracking_thread_runs_torch_on_one_thread_and_training_keeps_its_own(two_threads):
    background, seen = Background(), []
    background.submit(lambda: None)  # the thread starts with a job that runs no torch operation
    background.drain()
    torch.set_num_threads(2)  # set again meanwhile: torch hands it to threads at their first operation
    background.submit(lambda: seen.append(torch.get_num_threads()))
    background.drain()
    background.close()
    assert seen == [1] and torch.get_num_threads() == 2


def test_jobs_run_in_the_order_they_were_queued():
    background, done = Background(max_pending=2), []
    for number in range(20):  # more than max_pending: submit waits for a free slot
        background.submit(done.append, number)
    background.drain()
    background.close()
    assert done == list(range(20))
