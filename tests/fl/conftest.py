"""The client tests run many batch-of-one passes: one intra-op thread is as fast and never thrashes a busy CPU."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(single_thread: None) -> None:
    """Every client test runs under ``single_thread`` (``tests/conftest.py``)."""
