"""Start and stop a real Spark standalone cluster (one master, one worker) on loopback.

Used by the `cluster` tests. The pip-installed pyspark package is a full Spark
distribution (`SPARK_HOME` = the package directory), so no download is needed. Every
daemon runs in its own process group and is stopped by its process id, never by name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyspark


def spark_home() -> Path:
    """The Spark distribution inside the installed pyspark package."""
    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(**extra: str) -> dict[str, str]:
    """Environment for the daemons, spark-submit and the Python workers.

    Loopback only, the test interpreter (and so its packages) on every Python worker,
    no model hub.
    """
    env = dict(os.environ)
    env.update(
        SPARK_HOME=str(spark_home()),
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        SPARK_DAEMON_MEMORY="512m",
    )
    env.update(extra)
    return env


@dataclass
class StandaloneCluster:
    """A running master + worker; `stop()` ends both."""

    master_url: str
    webui_url: str
    work_dir: Path
    log_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        """The master's JSON status page (workers, active and completed applications)."""
        with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=5) as resp:
            return json.loads(resp.read().decode())

    def logs(self) -> str:
        """The daemons' own logs, for failure messages."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name} (last 3000 chars)\n{text[-3000:]}")
        return "\n".join(parts)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop worker then master: SIGTERM to each process group, SIGKILL if it lingers."""
        for proc in reversed(self.processes):
            _stop_group(proc, timeout)
        self.processes.clear()


def _stop_group(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the group id is the pid: start_new_session=True
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(timeout=timeout)


def _daemon(cls: str, args: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [str(spark_home() / "bin" / "spark-class"), cls, *args]
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            stdin=subprocess.DEVNULL,
        )


def start_cluster(base: Path, *, cores: int = 2, memory: str = "2g", timeout: float = 120.0) -> StandaloneCluster:
    """Start a standalone master and one worker on 127.0.0.1 and wait until the worker registered.

    Args:
        base: a scratch directory; the worker's work dir (one folder per application with
            each executor's stdout/stderr) and the daemon logs go under it.
        cores: cores the worker offers.
        memory: memory the worker offers.
        timeout: seconds to wait for the worker to register.

    Raises:
        RuntimeError: a daemon exited or the worker did not register in time; the message
            carries the daemon logs. Whatever started is stopped first.
    """
    env = cluster_env()
    work_dir, log_dir = base / "worker-work", base / "cluster-logs"
    work_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    port, webui = free_port(), free_port()
    cluster = StandaloneCluster(
        master_url=f"spark://127.0.0.1:{port}", webui_url=f"http://127.0.0.1:{webui}",
        work_dir=work_dir, log_dir=log_dir,
    )
    try:
        cluster.processes.append(_daemon(
            "org.apache.spark.deploy.master.Master",
            ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui)],
            log_dir / "master.log", env,
        ))
        cluster.processes.append(_daemon(
            "org.apache.spark.deploy.worker.Worker",
            ["--host", "127.0.0.1", "--port", str(free_port()), "--webui-port", str(free_port()),
             "--cores", str(cores), "--memory", memory, "--work-dir", str(work_dir), cluster.master_url],
            log_dir / "worker.log", env,
        ))
        _wait_for_worker(cluster, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for_worker(cluster: StandaloneCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        for proc in cluster.processes:
            if proc.poll() is not None:
                raise RuntimeError(f"a Spark daemon exited with code {proc.returncode}:\n{cluster.logs()}")
        try:
            if cluster.state().get("aliveworkers", 0) >= 1:
                return
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as exc:
            last_error = exc  # the master's web UI is not up yet
        time.sleep(0.5)  # polling interval while the JVMs start, not a fixed wait
    raise RuntimeError(
        f"no worker registered with {cluster.master_url} within {timeout:.0f}s "
        f"(last error: {last_error}):\n{cluster.logs()}"
    )


def spark_submit(
    cluster: StandaloneCluster,
    script: Path,
    args: Sequence[str] = (),
    *,
    conf: dict[str, str] | None = None,
    name: str | None = None,
    cwd: Path | None = None,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess:
    """`spark-submit --master <cluster> [--name] [--conf k=v ...] script args`, as a subprocess.

    The process runs in its own group; on a timeout the whole group (driver JVM and its
    Python child) is killed before `TimeoutExpired` propagates.
    """
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", cluster.master_url]
    if name:
        cmd += ["--name", name]
    for key, value in (conf or {}).items():
        cmd += ["--conf", f"{key}={value}"]
    cmd += [str(script), *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster_env(),
        cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc, 10.0)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
