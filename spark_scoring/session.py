"""SparkSession factory.

The embedded default is `local[*]` with Arrow on and Python worker reuse (the per-worker
model cache relies on reused workers). Whatever spark-submit, a cluster or an already
running session set always wins: this module only fills in settings nobody gave.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from spark_scoring.config import SparkConfig

log = logging.getLogger(__name__)

DEFAULT_MASTER = "local[*]"
_QUIET_LOG4J = Path(__file__).with_name("log4j2-quiet.properties")

#: Settings the scoring engine relies on; applied only where nobody set them.
DEFAULT_CONF: Mapping[str, str] = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.pyspark.udf.simplifiedTraceback.enabled": "true",
}


def get_spark(config: SparkConfig | None = None, app_name: str = "spark-scoring") -> SparkSession:
    """Return the active SparkSession, or build one from `config` where none runs.

    Precedence, highest first: an active session (e.g. Databricks, notebooks), settings
    given to spark-submit (`--master`, `--conf`, visible in `SparkConf()`), the job
    config's `spark.master` / `spark.conf`, then `DEFAULT_CONF`.
    """
    config = config or SparkConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        log.info("using the active SparkSession (master %s)", active.sparkContext.master)
        return active

    submitted = _submitted_conf()
    builder = SparkSession.builder.appName(config.app_name or submitted.get("spark.app.name", app_name))
    if not submitted.contains("spark.master"):
        builder = builder.master(config.master or DEFAULT_MASTER)
    for key, value in {**DEFAULT_CONF, **config.conf}.items():
        if not submitted.contains(key):
            builder = builder.config(key, value)
    if not submitted.contains("spark.driver.extraJavaOptions") and "spark.driver.extraJavaOptions" not in config.conf:
        verbose = logging.getLogger("spark_scoring").isEnabledFor(logging.DEBUG)
        if not verbose:  # no JVM log spam on the console by default
            builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{_QUIET_LOG4J}")
    master = submitted.get("spark.master", config.master or DEFAULT_MASTER)
    if master.startswith("local") and "SPARK_LOCAL_IP" not in os.environ:
        # Local mode binds to loopback; saying so avoids a warning about the host name.
        os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    if not submitted.contains("spark.pyspark.python") and "PYSPARK_PYTHON" not in os.environ:
        # Executors must run the same interpreter (and so the same packages) as the driver.
        os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = builder.getOrCreate()
    _quiet_jvm_logs(spark)
    log.info("SparkSession up: master %s, Spark %s", spark.sparkContext.master, spark.version)
    return spark


def _submitted_conf() -> SparkConf:
    """The settings spark-submit (or an already started JVM) holds.

    spark-submit passes `--master` and `--conf` to the driver JVM as system properties, and
    starts the Python driver with PYSPARK_GATEWAY_PORT pointing at that JVM. A `SparkConf()`
    only sees them once the gateway is connected, so connect first in that case. Without
    spark-submit no JVM is started here: JVM options such as spark.driver.memory must still
    reach the JVM that `getOrCreate()` launches.
    """
    if os.environ.get("PYSPARK_GATEWAY_PORT") or SparkContext._jvm is not None:  # type: ignore[attr-defined]
        SparkContext._ensure_initialized()  # type: ignore[attr-defined]
    return SparkConf()


def _quiet_jvm_logs(spark: SparkSession) -> None:
    """No Spark/JVM log spam on the console unless logging is verbose."""
    if not logging.getLogger("spark_scoring").isEnabledFor(logging.DEBUG):
        spark.sparkContext.setLogLevel("ERROR")
