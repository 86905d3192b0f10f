"""How spark-scoring reaches MLflow: URIs, explicit clients, quiet calls, reachability.

Shared by registration and resolution (`spark_scoring.models.register` / `.resolve`) and
by run tracking (`spark_scoring.tracking`). Calls go through an explicit `MlflowClient`
made for the URIs a job names (`make_client`), never through MLflow's process-wide
tracking/registry URIs or the fluent API's active run: nothing here calls
`mlflow.set_tracking_uri`, so two jobs in one process (or a notebook next to a job) never
see each other's stores. The one place where MLflow itself reads the process-wide URI is
`store_resolves_logged_models` (see there).

Named `mlflow_env`, not `mlflow`, so that `import mlflow` inside the package still means
the MLflow package.
"""

from __future__ import annotations

import contextlib
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from spark_scoring.errors import TrackingError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow import MlflowClient

# How long a tracking server may take to answer before we call it unreachable.
_PROBE_TIMEOUT_S = 5.0
# Serialises our own scoped overrides in `store_resolves_logged_models`.
_PROCESS_URI_LOCK = threading.Lock()


def default_tracking_uri() -> str:
    """The tracking URI used when a job config names none.

    `MLFLOW_TRACKING_URI` wins when set; otherwise a SQLite store `mlflow.db` in the current
    working directory (absolute, so Spark executors and later `cd`s see the same file).
    """
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def make_client(tracking_uri: str, registry_uri: str | None = None) -> MlflowClient:
    """An `MlflowClient` bound to these URIs (the registry defaults to the tracking URI).

    A SQLite store is opened (created and migrated, the first time) under an exclusive file
    lock: two jobs starting at the same moment on a new store would otherwise both run
    MLflow's schema migrations and one would fail ("duplicate column name").
    """
    from mlflow import MlflowClient

    registry_uri = registry_uri or tracking_uri
    dbs = sorted({Path(u[len("sqlite:///"):]) for u in (tracking_uri, registry_uri) if u.startswith("sqlite:///")})
    with contextlib.ExitStack() as locks:
        for db in dbs:  # sorted: two processes take the locks in the same order
            locks.enter_context(_file_lock(db.with_suffix(".lock")))
        # The client opens its tracking store here; the registry store opens on first use.
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        if registry_uri.startswith("sqlite:///"):
            client.search_registered_models(max_results=1)
    return client


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing), held for the block."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet_mlflow(fail_fast: bool = False) -> Iterator[None]:
    """Silence MLflow/transformers progress bars; optionally make HTTP calls fail in seconds.

    MLflow retries HTTP requests 7 times with exponential back-off (minutes in total) and
    reads these variables at request time, so setting them around our calls is enough.
    A value the user exported is left alone; what we set is removed again on exit.
    """
    overrides = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    if fail_fast:
        overrides.update(
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
            MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
            MLFLOW_HTTP_REQUEST_TIMEOUT="20",
        )
    saved = {k: os.environ.get(k) for k in overrides}
    for key, value in overrides.items():
        if saved[key] is None:
            os.environ[key] = value
    tf_bars = None
    try:
        from transformers.utils import logging as tf_logging

        tf_bars = tf_logging.is_progress_bar_enabled()
        tf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - transformers missing or changed: bars are cosmetic
        tf_logging = None
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
        if tf_logging is not None and tf_bars:
            tf_logging.enable_progress_bar()


def check_tracking_reachable(uri: str, timeout: float = _PROBE_TIMEOUT_S) -> None:
    """Fail fast with a clear `TrackingError` when an HTTP tracking server does not answer.

    Any HTTP answer (even 404 from a proxy) counts as reachable; only connection errors
    and timeouts do not. Non-HTTP URIs (sqlite, databricks, file) are not probed.

    Raises:
        TrackingError: naming the URI, when nothing answers within `timeout` seconds.
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - the user's server
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"the MLflow tracking server {uri} is unreachable ({reason}); start it, or point "
            "mlflow.tracking_uri (or MLFLOW_TRACKING_URI) at a running server or a "
            "sqlite:/// store"
        ) from exc


def existing_store_uris(tracking_uri: str | None, registry_uri: str | None) -> tuple[str, str]:
    """(tracking, registry) URIs of a store that must already hold models, checked.

    Reading never creates a store: a SQLite file that does not exist is an error (MLflow
    would silently create an empty one), and HTTP servers must answer.

    Raises:
        TrackingError: the SQLite file is missing or a server does not answer.
    """
    tracking = tracking_uri or default_tracking_uri()
    registry = registry_uri or tracking
    for u in dict.fromkeys((tracking, registry)):
        if u.startswith("sqlite:///"):
            db = Path(u[len("sqlite:///") :])
            if not db.is_file():
                raise TrackingError(
                    f"the MLflow store {u} does not exist (no file {db}); register a model "
                    "there first, or set mlflow.tracking_uri to the store or server that "
                    "holds your models"
                )
        check_tracking_reachable(u)
    return tracking, registry


def artifact_location_for(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts.

    For a SQLite store the artifacts go next to the database file instead of MLflow's
    default `./mlruns` in whatever the current directory happens to be; servers decide for
    themselves (None).
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = Path(tracking_uri[len("sqlite:///") :])
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (db_path.parent / "mlartifacts" / safe).resolve().as_uri()


def get_or_create_experiment(client: MlflowClient, tracking_uri: str, name: str) -> str:
    """The id of experiment `name`, created (artifacts per `artifact_location_for`) when missing.

    Raises:
        TrackingError: the experiment exists but is deleted.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {name!r} at {tracking_uri} is deleted; restore it "
                "(mlflow experiments restore) or use another mlflow.experiment"
            )
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=artifact_location_for(tracking_uri, name))
    except MlflowException:
        # Another process created it between our lookup and create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def store_resolves_logged_models(tracking_uri: str, registry_uri: str) -> Iterator[None]:
    """Let an in-process registry store find our LoggedModels during the block.

    Registering a `models:/<model_id>` source (what links a version to its MLflow 3
    LoggedModel) makes MLflow's SQL registry store (sqlite, postgres, ...) look the
    LoggedModel up with a bare `MlflowClient()`, i.e. through the process-wide tracking URI
    (MLflow 3.17 `SqlAlchemyStore.create_model_version`; a TODO there says so). For that
    call only, and only for stores that run in this process, MLflow's module-level tracking
    URI points at `tracking_uri` and is put back exactly in `finally`. The environment
    (`MLFLOW_TRACKING_URI`), the registry URI and MLflow's tracing state are not touched.
    An HTTP or Databricks registry resolves the source on the server: nothing is changed.
    """
    scheme = urllib.parse.urlparse(registry_uri).scheme
    if scheme in ("http", "https") or scheme.startswith("databricks"):
        yield
        return
    from mlflow.tracking._tracking_service import utils as tracking_utils

    if not hasattr(tracking_utils, "_tracking_uri"):  # pragma: no cover - MLflow moved it
        raise TrackingError(
            "this MLflow version keeps its tracking URI elsewhere; spark-scoring cannot register "
            f"to {registry_uri} with it (tested with MLflow 3.17)"
        )
    with _PROCESS_URI_LOCK:
        saved = tracking_utils._tracking_uri
        tracking_utils._tracking_uri = tracking_uri
        try:
            yield
        finally:
            tracking_utils._tracking_uri = saved
