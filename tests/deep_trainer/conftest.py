"""Shared settings for the deep trainer tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The models here are tiny: one thread is faster than two and does not stall when other
    # jobs share the machine's two cores (OpenMP threads spin-wait for each other).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
