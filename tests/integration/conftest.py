"""Integration tests need PostgreSQL; Ray where a test asks for ``ray_local``."""

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)
