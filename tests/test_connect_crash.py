"""`test_crash.py`'s kills, with every `spark-scoring run` over a local Spark Connect server.

`SPARK_REMOTE=local[2]` makes each run start its own local Connect server (in the run's own
JVM, which dies with it): SIGKILL while scoring and while the files are written publishes
nothing, and the next run completes. (A killed client of a server of its own is in
`test_connect.py`.) Run with `make test-connect`.
"""

from __future__ import annotations

import pytest

from tests.test_crash import *  # noqa: F403  (the tests and their fixtures)
from tests.test_crash import test_sigkill_right_after_the_commit_lands

pytestmark = pytest.mark.connect
# After the commit a Connect client is no different from a classic one: not repeated here.
del test_sigkill_right_after_the_commit_lands


@pytest.fixture(autouse=True)
def _runs_over_a_local_connect_server(monkeypatch):
    monkeypatch.setenv("SPARK_REMOTE", "local[2]")
