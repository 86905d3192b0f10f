"""MLflow run tracking for spark-scoring: one MLflow run per scoring run, and its report.

`RunTracker` records one scoring run: params, metrics, tags, the resolved config, a run
report and a score distribution plot. A run that raises ends FAILED with the reason. Once
the run's commit landed (`set_output_version`), nothing the tracker does raises: the data
is published, so a tracking failure is a warning, never "run failed".
`close_stale_run` ends, afterwards, a run that published but was killed before its MLflow
run ended.
`render_report_markdown` is the pure renderer behind the report; the plot is drawn by
`spark_scoring.plots`. (Registering models lives in `spark_scoring.models.register`.)

Everything talks to MLflow through an explicit `MlflowClient` (`spark_scoring.mlflow_env`),
so a run never depends on (or leaks) the fluent API's "active run" or MLflow's
process-wide URIs. Nothing here prints.

Example:
    >>> with RunTracker(cfg) as tracker:
    ...     tracker.log_params({"job_name": cfg.name})
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_scoring.contract import CommitRecord
from spark_scoring.errors import TrackingError, first_line
from spark_scoring.mlflow_env import (
    check_tracking_reachable,
    default_tracking_uri,
    existing_store_uris,
    get_or_create_experiment,
    make_client,
    quiet_mlflow,
)
from spark_scoring.plots import render_distribution_png

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    from mlflow import MlflowClient

    from spark_scoring.config import JobConfig

_log = logging.getLogger(__name__)

# MLflow limits (mlflow/utils/validation.py): longer values are rejected, so we truncate.
_MAX_PARAM_LEN = 6000
_MAX_TAG_LEN = 8000
_MAX_FAILURE_LEN = 4000


# --------------------------------------------------------------------------------------
# RunTracker
# --------------------------------------------------------------------------------------


def _truncate(value: str, limit: int) -> str:
    suffix = "...[truncated]"
    return value if len(value) <= limit else value[: limit - len(suffix)] + suffix


class RunTracker:
    """One MLflow run per scoring run, driven by explicit run ids (no fluent active run).

    Use as a context manager: the run starts on enter, and ends FINISHED on a clean exit or
    FAILED (tag `spark_scoring.failure` = the exception message) when the block raises. A
    `KeyboardInterrupt` ends it KILLED. Failures while recording a failure are logged, never
    raised, so the original exception is what the caller sees.

    After `set_output_version` (the commit landed) every call is best effort: it fails fast
    (one HTTP retry), a failure is logged as a warning, and once MLflow stopped answering
    the remaining calls are skipped, so a dead tracking server costs seconds, not minutes
    of retries per call. The run still ends FINISHED when MLflow answers again at the end.

    Example:
        >>> with RunTracker(cfg) as tracker:
        ...     tracker.log_params({"job_name": cfg.name, "task": cfg.model.task})
        ...     tracker.log_metrics({"rows_scored": 1000})
    """

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.tracking_uri = cfg.mlflow.tracking_uri or default_tracking_uri()
        self.registry_uri = cfg.mlflow.registry_uri or self.tracking_uri
        self.experiment_name = cfg.mlflow.experiment
        self.experiment_id: str | None = None
        self.output_version: int | None = None
        self._client: MlflowClient | None = None
        self._run_id: str | None = None
        self._ended = False
        self._published = False
        self._lost: str | None = None  # why MLflow stopped answering after the commit
        self._ended_tried = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> RunTracker:
        """Get (or create) the experiment and start the run, with a client for this job's URIs.

        MLflow's process-wide tracking/registry URIs are left as they are.

        Raises:
            TrackingError: the tracking server is unreachable or refuses the run.
        """
        if self._run_id is not None:
            return self
        check_tracking_reachable(self.tracking_uri)
        from mlflow.exceptions import MlflowException

        self._client = make_client(self.tracking_uri, self.registry_uri)
        try:
            with quiet_mlflow(fail_fast=True):
                self.experiment_id = get_or_create_experiment(
                    self._client, self.tracking_uri, self.experiment_name
                )
                run = self._client.create_run(
                    self.experiment_id,
                    run_name=self.cfg.name,
                    tags={
                        "spark_scoring.job": self.cfg.name,
                        "spark_scoring.output_table": self.cfg.output.table,
                    },
                )
        except MlflowException as exc:
            raise TrackingError(
                f"cannot start an MLflow run in experiment {self.experiment_name!r} at "
                f"{self.tracking_uri}: {exc.message}"
            ) from exc
        self._run_id = run.info.run_id
        return self

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (None before `start()`)."""
        return self._run_id

    @property
    def published(self) -> bool:
        """True once `set_output_version` recorded that the run's commit landed."""
        return self._published

    def end(self, status: str = "FINISHED", failure: str | None = None) -> None:
        """End the run with `status` (FINISHED | FAILED | KILLED), recording `failure` if given.

        After the commit a failure here is logged, not raised (see the class docstring).
        """
        if self._run_id is None or self._ended:
            return
        client = self._require()
        tag = "spark_scoring.warning" if self._published else "spark_scoring.failure"

        def call(client: MlflowClient) -> None:
            if failure is not None:
                client.set_tag(self._run_id, tag, _truncate(failure, _MAX_FAILURE_LEN))
            client.set_terminated(self._run_id, status)

        if self._published:
            self._lost = None  # the end is worth one more try, whatever failed before
            self._ended_tried = True
            self._best_effort(f"mark the run {status}", call)
        else:
            with quiet_mlflow(fail_fast=True):
                call(client)
        self._ended = True

    def __enter__(self) -> RunTracker:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.end("FINISHED")
            except Exception as end_exc:  # noqa: BLE001
                raise TrackingError(
                    f"the scoring run finished but MLflow run {self._run_id} could not be "
                    f"marked FINISHED at {self.tracking_uri}: {end_exc}"
                ) from end_exc
            return False
        reason = f"{exc_type.__name__}: {exc}"
        if self._published:  # the data is out: the run did what it is for
            self.end("FINISHED", failure=f"published, then failed afterwards: {reason}")
            return False
        status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        try:
            self.end(status, failure=reason)
        except Exception:  # noqa: BLE001 - never hide the exception that ended the run
            _log.warning("could not record the failure of MLflow run %s", self._run_id, exc_info=True)
        return False

    # -- logging -----------------------------------------------------------------------

    def _require(self) -> MlflowClient:
        if self._client is None or self._run_id is None:
            raise TrackingError("the MLflow run is not started; call RunTracker.start() first")
        return self._client

    def _call(self, what: str, call: Callable[[MlflowClient], None]) -> None:
        """Make one MLflow call for this run: strict before the commit, best effort after it."""
        client = self._require()
        if self._published:
            self._best_effort(what, call)
            return
        from mlflow.exceptions import MlflowException

        try:
            with quiet_mlflow():
                call(client)
        except MlflowException as exc:
            raise TrackingError(
                f"MLflow refused to {what} for run {self._run_id} at {self.tracking_uri}: {exc.message}"
            ) from exc

    def _best_effort(self, what: str, call: Callable[[MlflowClient], None]) -> None:
        if self._lost is not None:
            _log.debug("skipped: %s for MLflow run %s (%s)", what, self._run_id, self._lost)
            return
        try:
            with quiet_mlflow(fail_fast=True):
                call(self._require())
        except Exception as exc:  # noqa: BLE001 - published: nothing here may fail the run
            self._lost = f"{type(exc).__name__}: {first_line(exc)}"
            _log.warning(
                "output version %s is published, but MLflow run %s could not %s at %s (%s)%s. "
                "The data is complete: the next run does not redo it, and ends this MLflow run "
                "if it is left RUNNING",
                self.output_version, self._run_id, what, self.tracking_uri, self._lost,
                "" if self._ended_tried else "; its later records are skipped",
            )

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log run params (values become strings; None is skipped). Params are write-once."""
        from mlflow.entities import Param

        items = [Param(k, _truncate(str(v), _MAX_PARAM_LEN)) for k, v in params.items() if v is not None]
        self._call("log params", lambda client: client.log_batch(self._run_id, params=items))

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """Log numeric metrics; None values are skipped, bools become 0/1.

        Raises:
            TrackingError: a value is not a number.
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for key, value in metrics.items():
            if value is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError) as exc:
                raise TrackingError(f"metric {key!r} must be a number, got {value!r}") from exc
            items.append(Metric(key, number, now, step))
        self._call("log metrics", lambda client: client.log_batch(self._run_id, metrics=items))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values become strings; None is skipped)."""
        from mlflow.entities import RunTag

        items = [RunTag(k, _truncate(str(v), _MAX_TAG_LEN)) for k, v in tags.items() if v is not None]
        self._call("set tags", lambda client: client.log_batch(self._run_id, tags=items))

    def log_config(self, cfg: JobConfig | None = None) -> None:
        """Log the resolved job config as the artifact `config.yaml`."""
        text = (cfg or self.cfg).to_yaml()
        self._call("log config.yaml", lambda client: client.log_text(self._run_id, text, "config.yaml"))

    def log_report(self, report: Mapping[str, Any]) -> None:
        """Log a run report as `report.json` and a readable `report.md` rendered from it."""
        text = json.dumps(report, indent=2, sort_keys=False, default=str)
        markdown = render_report_markdown(report, job=self.cfg.name, run_id=self._run_id)

        def call(client: MlflowClient) -> None:
            client.log_text(self._run_id, text, "report.json")
            client.log_text(self._run_id, markdown, "report.md")

        self._call("log the run report", call)

    def log_distribution(self, values: np.ndarray, kind: str, title: str) -> None:
        """Log a histogram PNG `distribution.png` of scores or embedding norms.

        Args:
            values: 1-D array of scores or norms; for kind "embedding_norm" a 2-D array of
                embeddings is accepted too (its row norms are plotted). Non-finite values
                are dropped.
            kind: "score" | "embedding_norm".
            title: plot title; the job name and output version are appended.
        """
        if kind not in ("score", "embedding_norm"):
            raise TrackingError(f"distribution kind {kind!r} is not supported; use 'score' or 'embedding_norm'")
        png = render_distribution_png(values, kind, self._plot_title(title))

        def call(client: MlflowClient) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp, "distribution.png")
                target.write_bytes(png)
                client.log_artifact(self._run_id, str(target))

        self._call("log distribution.png", call)

    def set_output_version(self, version: int) -> None:
        """Record that the run's commit landed as output version `version` (tag
        `spark_scoring.output_version` + metric). From here on the tracker never raises
        (see the class docstring)."""
        self._published = True
        self.output_version = int(version)
        self.set_tags({"spark_scoring.output_version": self.output_version})
        self.log_metrics({"output_version": self.output_version})

    def _plot_title(self, title: str) -> str:
        suffix = f"job {self.cfg.name}"
        if self.output_version is not None:
            suffix += f", output version {self.output_version}"
        return f"{title}\n({suffix})"


# --------------------------------------------------------------------------------------
# Runs that published but never ended
# --------------------------------------------------------------------------------------

#: Tag on an MLflow run that a later run ended (its process stopped after the commit).
CLOSED_AFTERWARDS_TAG = "spark_scoring.closed_afterwards"


def close_stale_run(cfg: JobConfig, record: CommitRecord | None, *, output_version: int | None = None) -> str | None:
    """End the MLflow run behind the output's last commit when it is still RUNNING.

    A run whose process is killed after its commit landed and before its MLflow run ended
    leaves published rows whose `run_id` names a run that stays RUNNING forever. The next
    run of the job calls this at its start with the job's last commit record: that run is
    marked FINISHED (the data it made is published) with tag `CLOSED_AFTERWARDS_TAG`
    saying so, and `spark_scoring.output_version` when it is missing. Its metrics and
    report may be missing; the rows and the commit metadata are complete.

    Best effort and quick: an unreachable server, a missing store, a run that is not
    there (another tracking server) or not this job's is left alone (logged), never an
    error, so a tracking problem cannot stop the night's run.

    Args:
        cfg: the job config (its MLflow tracking URI).
        record: the output's last commit record of this job (None: nothing to close).
        output_version: the output version that commit made.

    Returns:
        The id of the run that was ended, or None.
    """
    if record is None or not record.run_id or record.job != cfg.name:
        return None
    uri = cfg.mlflow.tracking_uri or default_tracking_uri()
    try:
        existing_store_uris(uri, uri)  # never creates a store; a dead server fails in seconds
        client = make_client(uri)
        with quiet_mlflow(fail_fast=True):
            run = client.get_run(record.run_id)
            if run.info.status != "RUNNING" or run.data.tags.get("spark_scoring.job") != cfg.name:
                return None
            note = (f"ended by a later run of job {cfg.name!r}: this run's commit landed"
                    + (f" (output version {output_version})" if output_version is not None else "")
                    + " but its process stopped before it ended this MLflow run; its rows are "
                    "published, its metrics and report may be missing")
            client.set_tag(run.info.run_id, CLOSED_AFTERWARDS_TAG, note)
            if output_version is not None and "spark_scoring.output_version" not in run.data.tags:
                client.set_tag(run.info.run_id, "spark_scoring.output_version", str(output_version))
            client.set_terminated(run.info.run_id, "FINISHED")
    except Exception as exc:  # noqa: BLE001 - see above: never fails a run
        _log.warning("could not check or end MLflow run %s of the last commit at %s: %s",
                     record.run_id, uri, first_line(exc))
        return None
    _log.warning("MLflow run %s published but was left RUNNING; marked it FINISHED (tag %s)",
                 record.run_id, CLOSED_AFTERWARDS_TAG)
    return record.run_id


# --------------------------------------------------------------------------------------
# Rendering (pure functions, testable without MLflow)
# --------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isfinite(value) and value != int(value):
            return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.1f}"
        return f"{value:,.0f}" if math.isfinite(value) else str(value)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, Any]], header: tuple[str, str]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | ---: |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    return lines


def render_report_markdown(report: Mapping[str, Any], job: str = "", run_id: str | None = None) -> str:
    """Render a run report dict as Markdown: a summary table, the phases, then other sections.

    Scalars at the top level form the summary table; the `seconds` (or `phases`) mapping
    becomes the phase table (with each phase's share of the total); other mappings and
    lists of mappings become their own sections.
    """
    title = f"# Scoring run report: {job}" if job else "# Scoring run report"
    lines = [title, ""]
    if run_id:
        lines += [f"MLflow run `{run_id}`", ""]
    scalars = [(k, v) for k, v in report.items() if not isinstance(v, (Mapping, list, tuple))]
    if scalars:
        lines += ["## Summary", "", *_table(scalars, ("item", "value")), ""]
    phase_key = next((k for k in ("seconds", "phases") if isinstance(report.get(k), Mapping)), None)
    if phase_key:
        phases = report[phase_key]
        total = phases.get("total")
        lines += ["## Phases", "", "| phase | seconds | share |", "| --- | ---: | ---: |"]
        for name, secs in phases.items():
            share = ""
            if isinstance(total, (int, float)) and total and name != "total" and isinstance(secs, (int, float)):
                share = f"{100.0 * secs / total:.0f}%"
            lines.append(f"| {name} | {_fmt(secs)} | {share} |")
        lines.append("")
    for key, value in report.items():
        if key == phase_key:
            continue
        if isinstance(value, Mapping):
            lines += [f"## {key}", "", *_table(list(value.items()), ("key", "value")), ""]
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            cols: list[str] = []
            for row in value:
                cols += [c for c in row if c not in cols]
            lines += [f"## {key}", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
            lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |" for row in value]
            lines.append("")
        elif isinstance(value, (list, tuple)):
            lines += [f"## {key}", "", *(f"- {_fmt(v)}" for v in value), ""]
    return "\n".join(lines).rstrip() + "\n"
