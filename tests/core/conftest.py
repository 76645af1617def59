"""Fixtures of the core's tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """The learner tests' matrices are tiny: a second thread only adds sync overhead (and stalls under
    load). Modules ask for it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
