"""`test_notebooks.py` unchanged, over Spark Connect.

The Databricks notebook runs cell by cell in this process on the suite's Connect session
(its `get_spark()` finds it active, as on Databricks serverless); the Jupyter notebook runs
in a kernel whose `get_spark()` connects to the suite's server through `SPARK_REMOTE`.
Run with `make test-connect` (see `tests/connect_server.py`).
"""

from __future__ import annotations

import pytest

from tests.connect_server import connect_session, server_url
from tests.test_notebooks import *  # noqa: F403  (the tests and their fixtures)

pytestmark = pytest.mark.connect


@pytest.fixture(scope="session")
def spark():
    """A Spark Connect session (overrides the classic `spark` of conftest.py here)."""
    return connect_session()


@pytest.fixture(autouse=True)
def _kernel_connects_to_the_suite_server(monkeypatch, spark):
    monkeypatch.setenv("SPARK_REMOTE", server_url())
