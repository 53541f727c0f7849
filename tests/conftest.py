"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # The unit tests use tiny tensors, for which thread start-up costs more than the maths (and on
    # a shared 2-core machine, two threads per process oversubscribe the cores). Subprocesses of
    # the integration tests keep PyTorch's default.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
