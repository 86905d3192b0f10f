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

Spark Connect: the job runs over a remote session when `SPARK_REMOTE` is set (it wins, as
spark-submit's settings do), when the config has `spark.remote`, or when the active session
is a Connect session (Databricks notebooks and serverless jobs); `spark.master` is ignored
then. `local[N]` starts a local Connect server in this process's own JVM, with the same
settings (Delta connector included) as a classic session built here; `sc://host:port` joins
a server of its own, whose static settings are its own (only runtime SQL settings are set
in the new session). Nothing on the Connect path reaches for a JVM from Python: `is_connect`,
`default_parallelism` and `is_local_server` are what the rest of the package asks instead.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from spark_scoring.config import SparkConfig, remote_problem
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

    Precedence, highest first: an active session (e.g. Databricks, notebooks, a Connect
    session), a Spark Connect address (`SPARK_REMOTE`, then the config's `spark.remote`: see
    the module docstring), settings given to spark-submit (`--master`, `--conf`, visible in
    `SparkConf()`), the job config's `spark.master` / `spark.conf`, then `DEFAULT_CONF`.

    Args:
        engine: the lakehouse engine the session serves (`lakehouse.engine`). "auto" and
            "delta-spark" put the Delta Lake connector on the classpath of a session built
            here when its jars are installed and the classpath lacks them (see the module
            docstring); "delta-spark" fails fast, before any JVM starts, when it cannot.

    Raises:
        UsageError: engine "delta-spark", but the Delta Lake jars are neither installed nor
            on the classpath (the message says how to get them); a Spark Connect address
            that is malformed or whose server cannot be reached.
    """
    config = config or SparkConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        log.info("using the active %s", describe(active))
        return active
    remote = _remote_address(config)
    if remote is not None:
        return _connect(remote, config, app_name, engine=engine)

    submitted = _submitted_conf()
    builder = SparkSession.builder.appName(submitted.get("spark.app.name", config.app_name or app_name))
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
    log.info("%s up", describe(spark))
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


def require_delta_jars(config: SparkConfig) -> None:
    """Fail fast, before any JVM starts, when a session started here for engine
    'delta-spark' would have no Delta connector (neither installed nor configured)."""
    conf = config.conf
    if "io.delta" in conf.get("spark.jars.packages", "") or "delta-spark" in conf.get("spark.jars", ""):
        return
    if find_delta_jars() is None:
        raise _no_delta_jars()


def _no_delta_jars() -> UsageError:
    return UsageError(
        "lakehouse.engine is 'delta-spark', but the Delta Lake JVM connector is neither on "
        f"the Spark classpath nor installed: {missing_jars_message()}; or use "
        "lakehouse.engine 'delta-rs' (table paths only)"
    )


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
                raise _no_delta_jars()
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
    if is_connect(spark):  # spark.api.mode=connect: the server's JVM got the quiet log4j file
        return
    if not logging.getLogger("spark_scoring").isEnabledFor(logging.DEBUG):
        spark.sparkContext.setLogLevel("ERROR")


# --------------------------------------------------------------------------------------
# Spark Connect
# --------------------------------------------------------------------------------------

#: The port a Spark Connect server listens on unless its address names another.
CONNECT_PORT = 15002


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session: no SparkContext, no JVM behind it in this process."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def is_local_server(spark: SparkSession) -> bool:
    """True for a Connect session whose server pyspark started in this process (`local[N]`).

    Its executors run on this machine and read this machine's files; a server of its own
    (`sc://...`) may run anywhere, so files must be shipped to it.
    """
    return is_connect(spark) and "SPARK_LOCAL_REMOTE" in os.environ


def describe(spark: SparkSession) -> str:
    """Which kind of session this is, for the log: classic (its master) or Spark Connect."""
    if not is_connect(spark):
        return f"classic SparkSession (master {spark.sparkContext.master}, Spark {spark.version})"
    if is_local_server(spark):
        where = f"a local Spark Connect server ({_conf(spark, 'spark.master') or 'local'})"
    else:
        where = f"Spark Connect server {spark.client.host}"
    return f"Spark Connect session to {where} (Spark {spark.version})"


_parallelism: weakref.WeakKeyDictionary[SparkSession, int] = weakref.WeakKeyDictionary()


def default_parallelism(spark: SparkSession) -> int:
    """The session's default parallelism (about its cores), on classic and Connect sessions.

    Classic: `SparkContext.defaultParallelism`. Connect has no SparkContext: the server's
    `spark.default.parallelism` where it is set, else the number of partitions Spark gives a
    `range` without one (Spark uses the default parallelism there), found by one tiny job
    and remembered for the session.
    """
    if not is_connect(spark):
        return max(1, spark.sparkContext.defaultParallelism)
    if spark not in _parallelism:
        given = _conf(spark, "spark.default.parallelism")
        if given and given.isdigit():
            _parallelism[spark] = max(1, int(given))
        else:
            last = spark.range(0, 1 << 16).select(F.spark_partition_id().alias("p")).agg(F.max("p")).first()[0]
            _parallelism[spark] = max(1, int(last or 0) + 1)
    return _parallelism[spark]


def _conf(spark: SparkSession, key: str) -> str | None:
    """A session setting, or None where it is unset or the server does not show it."""
    try:
        return spark.conf.get(key, None)
    except Exception:  # noqa: BLE001 - e.g. Databricks serverless refuses some keys
        return None


def _remote_address(config: SparkConfig) -> str | None:
    """The Spark Connect address the job runs over (SPARK_REMOTE wins), or None (classic).

    Raises:
        UsageError: the address is malformed.
    """
    env = os.environ.get("SPARK_REMOTE")
    remote = env or config.remote
    if not remote:
        return None
    if env and config.remote and env != config.remote:
        log.info("SPARK_REMOTE=%s wins over spark.remote %s", env, config.remote)
    problem = remote_problem(remote)
    if problem:
        raise UsageError(f"{'SPARK_REMOTE' if env else 'spark.remote'}: {problem}")
    return remote


def _connect(remote: str, config: SparkConfig, app_name: str, *, engine: str) -> SparkSession:
    """A Spark Connect session: a local server started here (`local[N]`) or a remote one."""
    if config.master:
        log.info("spark.master %s is ignored: the job runs over Spark Connect (%s)", config.master, remote)
    if remote.startswith("local"):
        spark = _local_server(remote, config, app_name, engine=engine)
    else:
        _check_reachable(remote)
        spark = SparkSession.builder.remote(remote).getOrCreate()
        _set_runtime_conf(spark, DEFAULT_CONF, quiet=True)
        _set_runtime_conf(spark, config.conf)
        if _conf(spark, "spark.python.worker.reuse") == "false":
            log.warning("the Spark Connect server has spark.python.worker.reuse=false: every task "
                        "loads the model again (set it to true where the server starts)")
    log.info("%s up", describe(spark))
    return spark


def _local_server(remote: str, config: SparkConfig, app_name: str, *, engine: str) -> SparkSession:
    """Start a local Connect server with what a classic session built here would get.

    pyspark hands every builder setting to the server's SparkConf when it starts it, static
    ones (jars, SQL extensions, the catalog, JVM options) included, then tries them all again
    on the new Connect session, where the static ones cannot change: those retries warn
    (CANNOT_MODIFY_STATIC_CONFIG) although the server has the values. The warnings are
    muted and the values checked on the server instead.
    """
    settings: dict[str, str] = {"spark.app.name": config.app_name or app_name, **DEFAULT_CONF, **config.conf}
    if "spark.driver.extraJavaOptions" not in config.conf and not logging.getLogger("spark_scoring").isEnabledFor(logging.DEBUG):
        settings["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile=file:{_QUIET_LOG4J}"
    builder = SparkSession.builder.remote(remote)
    for key, value in settings.items():
        builder = builder.config(key, value)
    if engine != "delta-rs":
        builder = _with_delta(builder, SparkConf(loadDefaults=False), config.conf, required=engine == "delta-spark")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # loopback, as for a classic local session
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the server's Python workers run our interpreter
    given = dict(builder._options)  # type: ignore[attr-defined]  # what the server was started with
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to set ")
        spark = builder.getOrCreate()
    for key, value in given.items():
        got = _conf(spark, key)
        # (pyspark adds JVM options of its own around ours: containment is enough)
        if key not in ("spark.remote", "spark.master") and (got is None or value not in got):
            log.warning("the local Spark Connect server did not take %s=%s (it has %s)", key, value, got)
    return spark


def _check_reachable(remote: str) -> None:
    """Fail in seconds, not after the client's minutes of retries, when no server listens."""
    url = urlparse(remote.split(";", 1)[0])
    host, port = url.hostname or "localhost", url.port or CONNECT_PORT
    try:
        with socket.create_connection((host, port), timeout=10):
            pass
    except OSError as exc:
        raise UsageError(
            f"no Spark Connect server answers at {host}:{port} ({remote}): {exc}; start the server "
            "or fix spark.remote / SPARK_REMOTE"
        ) from exc


def _set_runtime_conf(spark: SparkSession, conf: Mapping[str, str], *, quiet: bool = False) -> None:
    """Set the runtime SQL settings in a new session of a remote server; its static ones stay
    the server's (unless `quiet`, a different value is logged: it must be set where the
    server starts)."""
    for key, value in conf.items():
        try:
            modifiable = spark.conf.isModifiable(key)
        except Exception:  # noqa: BLE001 - a server that refuses to say: leave the key alone
            modifiable = False
        if modifiable:
            spark.conf.set(key, value)
        elif not quiet and _conf(spark, key) != value:
            log.warning(
                "%s=%s is not set: the Spark Connect server owns it (static); set it where the "
                "server starts", key, value,
            )
