"""Training does not wait for sleeping OpenMP workers once the tracking thread (sweeps/background.py) has
run torch: a real OpenMP runtime on 2 threads. Integration, not unit: 200 training steps on 2 threads
take seconds alone and tens of seconds on a loaded machine (the workers compete for the cores).
"""

import resource

import pytest
import torch

from fmnist_core.config import RunConfig
from fmnist_core.trainer import make_learner
from sweeps.execution.background import Background

pytestmark = pytest.mark.integration


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
