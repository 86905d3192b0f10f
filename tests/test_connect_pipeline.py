"""`test_pipeline.py` and `test_registry_e2e.py` unchanged, over Spark Connect.

Every scenario of the classic pipeline suite (first run and lineage, no-op rerun, incremental
runs equal to a full refresh, dry run, error budget and quarantine, schema drift, model
changes, two concurrent runs, hostile partition values, backfill, history gaps) and the
registry round trip run here with the `spark` fixture below: a Spark Connect session to the
suite's own server (`tests/connect_server.py`). Run with `make test-connect`.
"""

from __future__ import annotations

import pytest

from tests.connect_server import connect_session
from tests.test_pipeline import *  # noqa: F403  (the tests and their fixtures)
from tests.test_registry_e2e import *  # noqa: F403

pytestmark = pytest.mark.connect


@pytest.fixture(scope="session")
def spark():
    """A Spark Connect session (overrides the classic `spark` of conftest.py here)."""
    return connect_session()
