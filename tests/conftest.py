"""Suite-wide settings: poisoned allocations, deterministic seeds, the hypothesis CI profile, the `cuda` marker."""

from __future__ import annotations

import os

import pytest
import torch
import torch.utils.deterministic
from hypothesis import settings

# In CI the property tests draw the same examples every run, so a red build always reproduces; locally
# they explore new ones each run (and a failure found that way is pinned with @example).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _poison_uninitialised_memory():
    # With these two switches every torch.empty / new_empty / empty_like (from Python or from our C++
    # kernels through the dispatcher) comes back filled with NaN, so an output element a kernel forgets
    # to write fails the comparison instead of passing by luck.
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    torch.manual_seed(0)
    yield
    torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    torch.utils.deterministic.fill_uninitialized_memory = fill


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; run `make test-cuda` on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
