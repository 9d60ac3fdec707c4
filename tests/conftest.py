"""Shared pytest configuration.

Tests run with one torch thread by default: on a 2-core machine, OpenMP start-up dominates the tiny tensor
operations of unit tests. Tests marked ``all_threads`` (training runs) keep torch's default thread count.
"""
import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config):
    config.addinivalue_line("markers", "all_threads: run with torch's default number of threads")


@pytest.fixture(autouse=True)
def _torch_threads(request):
    saved = torch.get_num_threads()
    if request.node.get_closest_marker("all_threads") is None:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
