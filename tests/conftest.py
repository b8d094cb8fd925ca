"""
pytest configuration shared by the whole suite (trial never imports this file).

Markers are declared in pyproject.toml; nothing else is registered here.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.trial.unittest import TestCase as TrialTestCase


@pytest.fixture(scope="session")
def reactor() -> Any:
    """
    The global reactor, as installed by pytest-twisted (which has no fixture of its own).
    """
    from twisted.internet import reactor as globalReactor

    return globalReactor


def _isTrialTestCase(item: pytest.Item) -> bool:
    # Only twisted.trial.unittest.TestCase spins the real reactor; SynchronousTestCase
    # (its base class) does not, so it can run anywhere.
    cls = getattr(item, "cls", None)
    return isinstance(cls, type) and issubclass(cls, TrialTestCase)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """
    Run trial TestCases before everything else, in their collected order.

    Once a pytest-twisted test has run the reactor, a later trial TestCase that needs the
    real reactor fails (DirtyReactorAggregateError, or "event loop is already running"
    under asyncio), so they go first. The sort is stable: the rest keep their order.
    """
    items.sort(key=lambda item: 0 if _isTrialTestCase(item) else 1)
