"""MLflow for spark-scoring: register models, and record every scoring run.

Two jobs live here:

* `register_model` logs a local model directory (sentence-transformers, Hugging Face
  transformers, or an MLflow model directory) with the fitting MLflow flavour, registers
  a new version, tags it with the task it serves (`spark_scoring.task`), and moves an alias
  onto it. `spark_scoring.models.resolve.resolve_model` reads it back at the start of a run.
* `RunTracker` records one scoring run: params, metrics, tags, the resolved config, a run
  report and a score distribution plot. A run that raises ends FAILED with the reason.

Everything talks to MLflow through an explicit `MlflowClient`, so a run never depends on
(or leaks) the fluent API's "active run" state. Nothing here prints: MLflow's own progress
bars and registration messages are switched off while we call it.

Example:
    >>> uri = register_model(minilm_dir, "minilm", task="embedding", alias="champion",
    ...                      tracking_uri="sqlite:////tmp/mlflow.db")
    >>> uri
    'models:/minilm/1'
    >>> with RunTracker(cfg) as tracker:
    ...     tracker.log_params({"job_name": cfg.name})
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_scoring.config import TaskName
from spark_scoring.errors import ModelError, TrackingError
from spark_scoring.mlflow_env import (
    check_tracking_reachable,
    default_tracking_uri,
    get_or_create_experiment,
    make_client,
    quiet_mlflow,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    from mlflow import MlflowClient

    from spark_scoring.config import JobConfig

_log = logging.getLogger(__name__)

TASK_TAG = "spark_scoring.task"
TASKS: tuple[str, ...] = typing.get_args(TaskName)
DEFAULT_REGISTER_EXPERIMENT = "spark-scoring-models"

# MLflow limits (mlflow/utils/validation.py): longer values are rejected, so we truncate.
_MAX_PARAM_LEN = 6000
_MAX_TAG_LEN = 8000
_MAX_FAILURE_LEN = 4000


# --------------------------------------------------------------------------------------
# register_model
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _global_uris(tracking_uri: str, registry_uri: str) -> Iterator[None]:
    """Point MLflow's process-wide URIs at ours for the block, then restore them exactly.

    The flavours' `log_model` functions (and a few MLflow internals) only use the global
    URIs. `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI,
    so the previous module globals and environment are saved and put back as they were.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    old_tracking = tracking_utils._tracking_uri
    old_registry = registry_utils._registry_uri
    env_keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    old_env = {k: os.environ.get(k) for k in env_keys}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_tracking)
        registry_utils._registry_uri = old_registry
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _model_kind(path: Path) -> str:
    """'mlflow', 'sentence_transformers' or 'transformers', from the files in `path`."""
    if (path / "MLmodel").is_file():
        return "mlflow"
    if (path / "modules.json").is_file():
        return "sentence_transformers"
    if (path / "config.json").is_file():
        return "transformers"
    files = sorted(p.name for p in path.iterdir())[:20]
    raise ModelError(
        f"{path} is not a model directory: it has no MLmodel (MLflow model), modules.json "
        f"(sentence-transformers) or config.json (Hugging Face transformers); files there: {files}"
    )


def _architectures(path: Path) -> tuple[list[str], dict[str, Any]]:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path / 'config.json'}: {exc}") from exc
    return list(config.get("architectures") or []), config


def _is_generator(archs: list[str], config: Mapping[str, Any]) -> bool:
    return bool(config.get("is_encoder_decoder")) or any(
        a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs
    )


def _check_task_matches(path: Path, kind: str, task: str) -> None:
    """Raise `ModelError` when the model in `path` cannot serve `task` (nothing is logged yet)."""
    if task not in TASKS:
        raise ModelError(f"task {task!r} is not supported; use one of {', '.join(TASKS)}")
    if kind == "mlflow":
        from mlflow.models import Model

        flavors = Model.load(str(path)).flavors
        if task == "pyfunc":
            if "python_function" not in flavors:
                raise ModelError(
                    f"task 'pyfunc' needs an MLflow model with the python_function flavour; "
                    f"{path} has flavours {sorted(flavors)}"
                )
            return
        if "sentence_transformers" in flavors:
            if task != "embedding":
                raise ModelError(
                    f"{path} is a sentence-transformers model: it serves task 'embedding' "
                    f"(or 'pyfunc'), not {task!r}"
                )
            return
        if "transformers" in flavors:
            pipeline_task = flavors["transformers"].get("task")
            allowed = _PIPELINE_TASKS[task]
            if pipeline_task not in allowed:
                raise ModelError(
                    f"{path} is a transformers {pipeline_task!r} pipeline; task {task!r} needs "
                    f"one of {sorted(allowed)}"
                )
            return
        raise ModelError(
            f"task {task!r} needs a sentence-transformers or transformers MLflow model; {path} "
            f"has flavours {sorted(flavors)}; register it with task 'pyfunc' instead"
        )
    if task == "pyfunc":
        raise ModelError(
            f"task 'pyfunc' needs an MLflow model directory (with an MLmodel file); {path} is a "
            "plain Hugging Face directory: register it with task 'embedding', "
            "'text-classification' or 'text-generation'"
        )
    if kind == "sentence_transformers":
        if task != "embedding":
            raise ModelError(
                f"{path} is a sentence-transformers model (modules.json): it serves task "
                f"'embedding', not {task!r}"
            )
        return
    archs, config = _architectures(path)
    if task == "text-classification":
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ModelError(
                f"task 'text-classification' needs a sequence-classification model "
                f"(config.json architectures like 'BertForSequenceClassification'); {path} has "
                f"architectures {archs}"
            )
    elif task == "text-generation":
        if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            raise ModelError(
                f"task 'text-generation' needs a causal language model (architectures like "
                f"'GPT2LMHeadModel' or '...ForCausalLM'); {path} has architectures {archs}"
            )
    elif task == "embedding" and _is_generator(archs, config):
        raise ModelError(
            f"task 'embedding' needs an encoder or sentence-transformers model; {path} is a "
            f"generative model (architectures {archs})"
        )


# config task -> transformers pipeline tasks that serve it
_PIPELINE_TASKS: dict[str, frozenset[str]] = {
    "embedding": frozenset({"feature-extraction", "sentence-similarity"}),
    "text-classification": frozenset({"text-classification", "sentiment-analysis"}),
    "text-generation": frozenset({"text-generation"}),
    "pyfunc": frozenset(),
}

_EXAMPLE_TEXT = ["spark-scoring scores Delta tables with models."]


def _pip_requirements(*packages: str) -> list[str]:
    """Pinned requirements of what is installed; skips MLflow's slow inference subprocess."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", *packages):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def _model_card(path: Path) -> Any:
    """The directory's README as a ModelCard, so MLflow does not ask the hub for one."""
    readme = path / "README.md"
    if not readme.is_file():
        return None
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(readme)
    except Exception:  # noqa: BLE001 - the card is decoration, never a reason to fail
        return None


def _log_sentence_transformers(path: Path) -> Any:
    import mlflow
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    signature = mlflow.models.infer_signature(_EXAMPLE_TEXT, model.encode(_EXAMPLE_TEXT))
    return mlflow.sentence_transformers.log_model(
        model,
        name="model",
        signature=signature,
        input_example=_EXAMPLE_TEXT,
        pip_requirements=_pip_requirements("sentence-transformers", "transformers", "torch"),
    )


def _log_transformers(path: Path, task: str) -> Any:
    import mlflow
    import transformers

    pipeline_task = {"embedding": "feature-extraction"}.get(task, task)
    pipe = transformers.pipeline(pipeline_task, model=str(path), tokenizer=str(path), device="cpu")
    kwargs: dict[str, Any] = {}
    card = _model_card(path)
    if card is not None:
        kwargs["model_card"] = card
    # The signature is inferred by MLflow from the example by running the pipeline once,
    # which also proves the model works before it is registered.
    return mlflow.transformers.log_model(
        transformers_model=pipe,
        name="model",
        task=pipeline_task,
        input_example=_EXAMPLE_TEXT,
        pip_requirements=_pip_requirements("transformers", "torch"),
        **kwargs,
    )


def register_model(
    path: str | os.PathLike[str],
    name: str,
    task: str,
    alias: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_REGISTER_EXPERIMENT,
) -> str:
    """Log a local model directory with the fitting MLflow flavour and register a new version.

    * a sentence-transformers directory (has `modules.json`) -> sentence_transformers flavour
    * another Hugging Face directory (`config.json`) -> transformers flavour, logged as a
      pipeline (`feature-extraction` for task "embedding")
    * an MLflow model directory (`MLmodel`) -> its files are logged unchanged (flavours,
      signature and input example kept) and registered as is.

    The task is checked against the model before anything is logged. The new version is
    tagged `spark_scoring.task=<task>`, and `alias` (if given) is moved onto it.

    Args:
        path: the local model directory.
        name: registered model name (created when missing).
        task: embedding | text-classification | text-generation | pyfunc.
        alias: alias to point at the new version, e.g. "champion".
        tracking_uri: MLflow tracking (and registry) URI; default `default_tracking_uri()`.
        experiment: experiment that holds the logging runs.

    Returns:
        "models:/NAME/VERSION" of the new version.

    Raises:
        ModelError: the directory is missing, not a model, or cannot serve `task`.
        TrackingError: the tracking server cannot be used.
    """
    src = Path(path).expanduser().resolve()
    if not src.is_dir():
        raise ModelError(f"model directory {src} does not exist; pass the directory of a saved model")
    kind = _model_kind(src)
    _check_task_matches(src, kind, task)
    uri = tracking_uri or default_tracking_uri()
    check_tracking_reachable(uri)

    import mlflow
    from mlflow.exceptions import MlflowException

    client = make_client(uri)
    try:
        with quiet_mlflow(fail_fast=True), _global_uris(uri, uri):
            experiment_id = get_or_create_experiment(client, uri, experiment)
            run = client.create_run(
                experiment_id, run_name=f"register-{name}", tags={TASK_TAG: task, "spark_scoring.kind": kind}
            )
            run_id = run.info.run_id
            status = "FAILED"
            try:
                model_id = None
                if kind == "mlflow":
                    client.log_artifacts(run_id, str(src), artifact_path="model")
                    source = f"{run.info.artifact_uri.rstrip('/')}/model"
                else:
                    with mlflow.start_run(run_id=run_id):
                        if kind == "sentence_transformers":
                            info = _log_sentence_transformers(src)
                        else:
                            info = _log_transformers(src, task)
                    model_id = info.model_id
                    source = info.model_uri
                try:
                    client.create_registered_model(name)
                except MlflowException as exc:
                    if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                        raise
                mv = client.create_model_version(
                    name, source=source, run_id=run_id, tags={TASK_TAG: task}, model_id=model_id
                )
                if alias:
                    client.set_registered_model_alias(name, alias, mv.version)
                status = "FINISHED"
            finally:
                with contextlib.suppress(Exception):
                    client.set_terminated(run_id, status)
    except MlflowException as exc:
        raise TrackingError(f"registering {src} as {name!r} at {uri} failed: {exc.message}") from exc
    return f"models:/{name}/{mv.version}"


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

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> RunTracker:
        """Set the tracking/registry URIs and experiment (created when missing), start the run.

        Raises:
            TrackingError: the tracking server is unreachable or refuses the run.
        """
        if self._run_id is not None:
            return self
        check_tracking_reachable(self.tracking_uri)
        import mlflow
        from mlflow.exceptions import MlflowException

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
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

    def end(self, status: str = "FINISHED", failure: str | None = None) -> None:
        """End the run with `status` (FINISHED | FAILED | KILLED), recording `failure` if given."""
        if self._run_id is None or self._ended:
            return
        client = self._require()
        with quiet_mlflow(fail_fast=True):
            if failure is not None:
                client.set_tag(self._run_id, "spark_scoring.failure", _truncate(failure, _MAX_FAILURE_LEN))
            client.set_terminated(self._run_id, status)
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
        status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        reason = f"{exc_type.__name__}: {exc}"
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

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[MlflowClient]:
        client = self._require()
        from mlflow.exceptions import MlflowException

        try:
            with quiet_mlflow():
                yield client
        except MlflowException as exc:
            raise TrackingError(
                f"MLflow refused to {what} for run {self._run_id} at {self.tracking_uri}: {exc.message}"
            ) from exc

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log run params (values become strings; None is skipped). Params are write-once."""
        from mlflow.entities import Param

        items = [Param(k, _truncate(str(v), _MAX_PARAM_LEN)) for k, v in params.items() if v is not None]
        with self._calling("log params") as client:
            client.log_batch(self._run_id, params=items)

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
        with self._calling("log metrics") as client:
            client.log_batch(self._run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values become strings; None is skipped)."""
        from mlflow.entities import RunTag

        items = [RunTag(k, _truncate(str(v), _MAX_TAG_LEN)) for k, v in tags.items() if v is not None]
        with self._calling("set tags") as client:
            client.log_batch(self._run_id, tags=items)

    def log_config(self, cfg: JobConfig | None = None) -> None:
        """Log the resolved job config as the artifact `config.yaml`."""
        cfg = cfg or self.cfg
        with self._calling("log config.yaml") as client:
            client.log_text(self._run_id, cfg.to_yaml(), "config.yaml")

    def log_report(self, report: Mapping[str, Any]) -> None:
        """Log a run report as `report.json` and a readable `report.md` rendered from it."""
        text = json.dumps(report, indent=2, sort_keys=False, default=str)
        markdown = render_report_markdown(report, job=self.cfg.name, run_id=self._run_id)
        with self._calling("log the run report") as client:
            client.log_text(self._run_id, text, "report.json")
            client.log_text(self._run_id, markdown, "report.md")

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
        with self._calling("log distribution.png") as client, tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp, "distribution.png")
            target.write_bytes(png)
            client.log_artifact(self._run_id, str(target))

    def set_output_version(self, version: int) -> None:
        """Record the output table's Delta version (tag `spark_scoring.output_version` + metric)."""
        self.output_version = int(version)
        self.set_tags({"spark_scoring.output_version": self.output_version})
        self.log_metrics({"output_version": self.output_version})

    def _plot_title(self, title: str) -> str:
        suffix = f"job {self.cfg.name}"
        if self.output_version is not None:
            suffix += f", output version {self.output_version}"
        return f"{title}\n({suffix})"


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


def render_distribution_png(values: Any, kind: str, title: str) -> bytes:
    """A labelled histogram as PNG bytes (Agg canvas; never touches pyplot's global state)."""
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arr = np.asarray(values, dtype="float64")
    if kind == "embedding_norm" and arr.ndim == 2:
        arr = np.linalg.norm(arr, axis=1)
    arr = arr.ravel()
    arr = arr[np.isfinite(arr)]
    fig = Figure(figsize=(7, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xlabel = "score" if kind == "score" else "embedding L2 norm"
    if arr.size:
        bins = min(50, max(5, int(np.sqrt(arr.size))))
        ax.hist(arr, bins=bins, color="#3b75af", edgecolor="white")
        ax.axvline(float(np.median(arr)), color="#c44e52", linestyle="--", label=f"median {np.median(arr):.4g}")
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    ax.set_title(f"{title}  [n={arr.size:,}]", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
