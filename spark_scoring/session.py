"""SparkSession factory.

The embedded default is `local[*]` with Arrow on and Python worker reuse (the per-worker
model cache relies on reused workers). Whatever spark-submit, a cluster or an already
running session set always wins: this module only fills in settings nobody gave.

The Delta Lake JVM connector: where its jars are installed (`spark_scoring.jars`) and the
JVM lacks them, they are put on the classpath together with Delta's SQL extension and
catalog: through `spark.jars` when this module launches the JVM, and, under spark-submit
(whose JVM is already running), by adding them to the driver's class loader as well,
because `spark.jars` given after the JVM started reaches the executors but not the driver.
A classpath that already has Delta (Databricks, `--packages io.delta:...`) is left alone.
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
from spark_scoring.errors import UsageError
from spark_scoring.jars import (
    DELTA_CATALOG,
    DELTA_CLASS,
    DELTA_EXTENSION,
    find_delta_jars,
    missing_jars_message,
)

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



def get_spark(
    config: SparkConfig | None = None, app_name: str = "spark-scoring", *, engine: str = "auto"
) -> SparkSession:
    """Return the active SparkSession, or build one from `config` where none runs.

    Precedence, highest first: an active session (e.g. Databricks, notebooks), settings
    given to spark-submit (`--master`, `--conf`, visible in `SparkConf()`), the job
    config's `spark.master` / `spark.conf`, then `DEFAULT_CONF`.

    Args:
        engine: the lakehouse engine the session serves (`lakehouse.engine`). "auto" and
            "delta-spark" put the Delta Lake connector on the classpath of a session built
            here when its jars are installed and the classpath lacks them (see the module
            docstring); "delta-spark" fails fast, before any JVM starts, when it cannot.

    Raises:
        UsageError: engine "delta-spark", but the Delta Lake jars are neither installed nor
            on the classpath (the message says how to get them).
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
    if engine != "delta-rs":
        builder = _with_delta(builder, submitted, config.conf, required=engine == "delta-spark")
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


def _with_delta(
    builder: SparkSession.Builder, submitted: SparkConf, conf: Mapping[str, str], *, required: bool
) -> SparkSession.Builder:
    """Add the Delta connector jars, SQL extension and catalog where the classpath lacks them."""

    def given(key: str) -> str:
        return conf.get(key) or (submitted.get(key) if submitted.contains(key) else "") or ""

    if "io.delta" in given("spark.jars.packages") or "delta-spark" in given("spark.jars") or _jvm_has_delta():
        log.info("Delta Lake connector: already on the classpath")
        jars = None
    else:
        jars = find_delta_jars()
        if jars is None:
            if required:
                raise UsageError(
                    "lakehouse.engine is 'delta-spark', but the Delta Lake JVM connector is neither on "
                    f"the Spark classpath nor installed: {missing_jars_message()}; or use "
                    "lakehouse.engine 'delta-rs' (table paths only)"
                )
            log.info("Delta Lake connector: jars not installed; the delta-rs engine serves table paths")
            return builder
        if SparkContext._jvm is not None:  # type: ignore[attr-defined]  # spark-submit's JVM is up
            _add_to_driver_classpath(jars)
        builder = builder.config("spark.jars", ",".join(filter(None, [given("spark.jars"), *map(str, jars)])))
        log.info("Delta Lake connector: added %s", ", ".join(j.name for j in jars))
    extensions = given("spark.sql.extensions")
    if DELTA_EXTENSION not in extensions:
        builder = builder.config("spark.sql.extensions", ",".join(filter(None, [extensions, DELTA_EXTENSION])))
    catalog = given("spark.sql.catalog.spark_catalog")
    if not catalog:
        builder = builder.config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
    elif catalog != DELTA_CATALOG:
        log.warning(
            "spark.sql.catalog.spark_catalog is %s, not Delta's catalog: Delta tables by path work, "
            "catalog names of Delta tables may not", catalog,
        )
    return builder


def _jvm_has_delta() -> bool:
    """True when a JVM is running (spark-submit) and the Delta classes load in it."""
    jvm = SparkContext._jvm  # type: ignore[attr-defined]
    if jvm is None:
        return False
    try:
        jvm.java.lang.Class.forName(DELTA_CLASS, False, jvm.Thread.currentThread().getContextClassLoader())
        return True
    except Exception:  # noqa: BLE001 - any failure means: not loadable
        return False


def _add_to_driver_classpath(jars) -> None:
    # spark-submit runs the Python driver under a MutableURLClassLoader (its context class
    # loader), which Spark itself uses to load SQL extensions and data sources.
    jvm = SparkContext._jvm  # type: ignore[attr-defined]
    loader = jvm.Thread.currentThread().getContextClassLoader()
    for jar in jars:
        loader.addURL(jvm.java.io.File(str(jar)).toURI().toURL())


def _quiet_jvm_logs(spark: SparkSession) -> None:
    """No Spark/JVM log spam on the console unless logging is verbose."""
    if not logging.getLogger("spark_scoring").isEnabledFor(logging.DEBUG):
        spark.sparkContext.setLogLevel("ERROR")
