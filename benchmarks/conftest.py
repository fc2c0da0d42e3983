"""Kernel benchmarks need a CUDA GPU: without one every benchmark is skipped (not failed)."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="GPU benchmarks: no CUDA device")
    for item in items:
        item.add_marker(skip)
