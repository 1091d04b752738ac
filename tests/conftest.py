"""Fixtures and hooks shared by every test folder."""

from __future__ import annotations

import pytest

from tests.requirements import require


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(component, missing): skip locally, fail in CI when missing "
                                       "(tests/requirements.py)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    # At setup, not collection: a missing component then fails (or skips) each test that needs it,
    # with its message, and never the collection of unrelated tests in the same run.
    for mark in item.iter_markers("requires"):
        require(*mark.args)
