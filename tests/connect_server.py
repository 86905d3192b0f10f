"""The Spark Connect server of the Connect test suite, started once per pytest process.

It is a separate JVM (`spark-submit --class ...SparkConnectServer`, the server pyspark
ships), so the test process itself has no JVM and no SparkContext, as a Databricks
serverless client has none: anything that still reached for one would fail here. It runs
`local[2]` with the settings of the classic test session (`conftest.spark`) and the Delta
Lake connector where its jars are installed. Its executors are another process: models
are shipped to them as on a real remote server (`addArtifacts`).

pyspark refuses a Connect session in a process that has a classic one (SESSION_ALREADY_EXIST,
and `getActiveSession` would then answer with the classic one): the suite runs in its own
pytest process, `make test-connect` (`-m connect`).

Test modules use it through a `spark` fixture of their own, which overrides the classic
one of `conftest.py` for them:

    >>> @pytest.fixture(scope="session")
    ... def spark():
    ...     return connect_session()
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
_url: str | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(work: Path) -> dict[str, str]:
    from tests.conftest import delta_jars

    conf = {
        "spark.sql.shuffle.partitions": "4",
        "spark.task.maxFailures": "1",
        "spark.ui.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.python.worker.reuse": "true",
        "spark.sql.execution.pyspark.udf.simplifiedTraceback.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.warehouse.dir": str(work / "warehouse"),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={work}",
        # A client that died leaves its running operation behind; the server drops it soon.
        "spark.connect.execute.manager.detachedTimeout": "20s",
    }
    # No spark.default.parallelism: the package must find it without a SparkContext.
    jars = delta_jars()
    if jars:
        conf.update({
            "spark.jars": ",".join(map(str, jars)),
            "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
            "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        })
    return conf


def server_url() -> str:
    """`sc://127.0.0.1:PORT` of the suite's server, started on the first call (about 20 s)."""
    global _url
    if _url is not None:
        return _url
    import pyspark

    work = Path(tempfile.mkdtemp(prefix="spark-scoring-connect-server-"))
    port = _free_port()
    spark_home = Path(pyspark.__file__).parent
    cmd = [str(spark_home / "bin" / "spark-submit"), "--class", _SERVER_CLASS, "--master", "local[2]",
           "--name", "spark-scoring-connect-tests", "--driver-memory", "2g",
           "--conf", f"spark.connect.grpc.binding.port={port}"]
    for key, value in _settings(work).items():
        cmd += ["--conf", f"{key}={value}"]
    cmd.append("spark-internal")
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home),
        "PYSPARK_PYTHON": sys.executable,  # the server's Python workers: this venv
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("SPARK_REMOTE", None)
    log = work / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    atexit.register(_stop, proc)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Spark Connect server exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        if "Spark Connect server started" in log.read_text(errors="replace"):
            _url = f"sc://127.0.0.1:{port}"
            return _url
        time.sleep(0.5)
    _stop(proc)
    raise RuntimeError(f"the Spark Connect server did not start in 240 s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def connect_session():
    """The suite's Connect session (one per process, like pyspark's default session)."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    if SparkContext._active_spark_context is not None:  # type: ignore[attr-defined]
        pytest.fail("a classic SparkSession runs in this process: run the Connect tests on their own "
                    "(make test-connect, i.e. pytest -m connect)")
    return SparkSession.builder.remote(server_url()).getOrCreate()
