"""Small typed tables for the feature tests, built from rows the tests write by hand."""

from __future__ import annotations

import pytest

from tests.support.tables import make_tables


@pytest.fixture
def tables_factory():
    return make_tables
