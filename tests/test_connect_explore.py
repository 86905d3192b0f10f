"""`test_explore.py` unchanged, over Spark Connect: the explore helpers on a Connect session.

Run with `make test-connect` (see `tests/connect_server.py`).
"""

from __future__ import annotations

import pytest

from tests.connect_server import connect_session
from tests.test_explore import *  # noqa: F403  (the tests and their fixtures)

pytestmark = pytest.mark.connect


@pytest.fixture(scope="session")
def spark():
    """A Spark Connect session (overrides the classic `spark` of conftest.py here)."""
    return connect_session()
