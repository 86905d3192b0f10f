"""A lakehouse that only reads Delta logs: planning a run before any Spark session exists.

Every metadata method of `Lakehouse` reads the Delta log directly (`deltalog`), so a run can
pin its source version, check schemas and decide what to do without a JVM; only reading rows
and writing need a session. `pipeline` plans with this one when it would otherwise have to
start a session just to find that there is nothing to do (a cold no-op night then costs what
reading a few log files costs), and opens the real backend once there is work.
"""

from __future__ import annotations

from pyspark.sql import DataFrame

from spark_scoring.errors import LakehouseError
from spark_scoring.lakehouse.base import Lakehouse, WriteRequest, WriteResult


class LogOnlyLakehouse(Lakehouse):
    """Table paths and URIs, read through their Delta logs; no rows, no writes."""

    engine = "log"

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type] - no session, by design

    def read(self, table: str, version: int, **_: object) -> DataFrame:
        raise LakehouseError(f"reading rows of {table!r} needs a Spark session; this lakehouse only plans")

    def _write(self, request: WriteRequest) -> WriteResult:
        raise LakehouseError(f"writing {request.table!r} needs a Spark session; this lakehouse only plans")
