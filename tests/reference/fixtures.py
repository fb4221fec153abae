"""Shared pytest fixtures for the tests of the RWKV-6 language model."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Run on one CPU thread: the test models are tiny, and with several threads OpenMP synchronisation
    dominates every op (10-100x slower on a busy 2-core machine). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
