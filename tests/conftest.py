"""Shared pytest configuration: the `gpu` marker and fixed seeds."""
import pytest
import torch


def pytest_configure(config):
    # The suite runs many small tensor ops: one intra-op thread avoids oversubscribing CI's two
    # cores (several-fold faster there) and keeps multi-process tests from starving each other.
    torch.set_num_threads(1)
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: long-running; excluded from CI with -m 'not slow'")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen():
    """A fixed-seed CPU generator for test data."""
    return torch.Generator().manual_seed(1234)
